//! `lxgate remote trust <url> <token>`: give lxgate an identity on a remote
//! Incus. Generates lxgate's ECDSA P-384 key pair if missing, checks the
//! server's certificate against the fingerprint inside the trust token, pins
//! it, and adds lxgate to the server's trust store with the token.

use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use reqwest::{Method, Url};
use serde::Deserialize;
use serde_json::json;

use super::client::{IdentityPaths, IncusClient};
use super::tls::{self, CertVerifier, ServerTrust};
use crate::config::IncusConfig;

/// The fields of an Incus trust token (base64 of JSON) lxgate checks.
#[derive(Debug, Deserialize)]
struct TokenData {
    #[serde(default)]
    fingerprint: String,
    #[serde(default)]
    client_name: String,
}

fn decode_token(token: &str) -> Option<TokenData> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.trim()))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

async fn write_private(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let tmp = path.with_extension("tmp");
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true).mode(mode);
    let mut f = opts
        .open(&tmp)
        .await
        .with_context(|| format!("writing {}", tmp.display()))?;
    tokio::io::AsyncWriteExt::write_all(&mut f, contents).await?;
    f.sync_all().await?;
    tokio::fs::rename(&tmp, path).await?;
    Ok(())
}

/// Creates lxgate's client key pair and self-signed certificate unless both exist.
pub async fn ensure_identity(paths: &IdentityPaths) -> anyhow::Result<bool> {
    if paths.cert.exists() && paths.key.exists() {
        return Ok(false);
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
        .context("generating an ECDSA P-384 key")?;
    let mut params = rcgen::CertificateParams::new(vec!["lxgate".to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "lxgate");
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key)?;
    write_private(&paths.key, key.serialize_pem().as_bytes(), 0o600).await?;
    write_private(&paths.cert, cert.pem().as_bytes(), 0o644).await?;
    Ok(true)
}

pub async fn trust(
    cfg: &IncusConfig,
    data_dir: &Path,
    url: &str,
    token: &str,
) -> anyhow::Result<()> {
    let base = Url::parse(url).context("the URL is not valid (e.g. https://incus.example:8443)")?;
    if base.scheme() != "https" {
        bail!("the URL must start with https://");
    }
    let token_data = decode_token(token).context(
        "this is not an Incus trust token (make one with `incus config trust add lxgate`)",
    )?;
    let paths = IdentityPaths::resolve(cfg, data_dir);
    if ensure_identity(&paths).await? {
        println!(
            "generated lxgate's client key pair: {}",
            paths.cert.display()
        );
    }
    let cert = tls::read_cert(&paths.cert).map_err(anyhow::Error::msg)?;
    let key = tls::read_key(&paths.key).map_err(anyhow::Error::msg)?;
    println!(
        "lxgate client certificate fingerprint: {}",
        tls::fingerprint(&cert)
    );

    // Connect once without trusting anything yet, only to learn the server's certificate.
    let recorder = CertVerifier::recording();
    let config = tls::client_config(
        ServerTrust::FirstUse(recorder.clone()),
        cert.clone(),
        key.clone_key(),
        cfg.insecure_tls,
    )
    .map_err(anyhow::Error::msg)?;
    let probe = IncusClient::remote_with(
        reqwest::Client::builder().timeout(cfg.timeout),
        vec![base.clone()],
        config,
    )
    .map_err(anyhow::Error::msg)?;
    let _ = probe
        .raw(Method::GET, &[], &[], None, None)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
    let server_der = recorder
        .seen()
        .context("the server presented no certificate")?;
    let server_fp = tls::fingerprint(&server_der);
    println!("server certificate fingerprint:        {server_fp}");
    // The token names the certificate of the server that issued it: a
    // mismatch means someone is in between, so the token is not sent.
    if !token_data.fingerprint.is_empty() && token_data.fingerprint != server_fp {
        bail!(
            "the server's certificate ({server_fp}) is not the one the trust token names ({}); refusing to send the token",
            token_data.fingerprint
        );
    }

    let pinned = tls::client_config(
        ServerTrust::Pinned(rustls::pki_types::CertificateDer::from(server_der.clone())),
        cert,
        key,
        cfg.insecure_tls,
    )
    .map_err(anyhow::Error::msg)?;
    let client = IncusClient::remote_with(
        reqwest::Client::builder().timeout(cfg.timeout),
        vec![base],
        pinned,
    )
    .map_err(anyhow::Error::msg)?;
    let name = if token_data.client_name.is_empty() {
        "lxgate".to_owned()
    } else {
        token_data.client_name
    };
    match client
        .query(
            Method::POST,
            &["certificates"],
            &[],
            Some(&json!({"type": "client", "trust_token": token.trim(), "name": name})),
            None,
        )
        .await
    {
        Ok(_) => {}
        // Already trusted (e.g. a second run): fine, the check below confirms.
        Err(crate::backend::BackendError::Conflict(_)) => {}
        Err(crate::backend::BackendError::BadRequest(m)) if m.contains("already trusted") => {}
        Err(e) => bail!("the server refused the trust token: {e}"),
    }
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::engine::general_purpose::STANDARD
            .encode(&server_der)
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    write_private(&paths.server_cert, pem.as_bytes(), 0o644).await?;
    let backend = super::IncusBackend::new(client);
    crate::backend::System::ping(&backend)
        .await
        .map_err(|e| anyhow::anyhow!("trust was not established: {e}"))?;
    println!(
        "pinned the server certificate: {}",
        paths.server_cert.display()
    );
    println!("lxgate is now trusted by {url}. Configure:");
    println!("  BACKEND=incus");
    println!("  INCUS_CONNECTION_MODE=remote");
    println!("  INCUS_REMOTE_URL={url}");
    if cfg.client_cert_path.is_none() {
        println!(
            "  (client certificate, key and pinned server certificate are in {}; INCUS_CLIENT_CERT_PATH, INCUS_CLIENT_KEY_PATH and INCUS_SERVER_CERT_PATH override)",
            paths.cert.parent().unwrap_or(Path::new(".")).display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_tokens_are_decoded() {
        let raw = r#"{"client_name":"lxgate","fingerprint":"abc","addresses":["127.0.0.1:8443"],"secret":"s","expires_at":"0001-01-01T00:00:00Z"}"#;
        let token = base64::engine::general_purpose::STANDARD.encode(raw);
        let d = decode_token(&token).unwrap();
        assert_eq!(
            (d.client_name.as_str(), d.fingerprint.as_str()),
            ("lxgate", "abc")
        );
        assert!(decode_token("not a token").is_none());
    }
}
