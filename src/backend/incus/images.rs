//! `/1.0/images` and `/1.0/images/aliases` on Incus.

use std::time::Duration;

use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::json;

use super::IncusBackend;
use super::files::{TRANSFER_TIMEOUT, download};
use super::instances::last_segment;
use crate::backend::types::{
    Download, Image, ImageAliasCreate, ImageAliasesEntry, ImageCopy, ImagePublish, ImageUpload,
    Operation, PublishFrom,
};
use crate::backend::{BackendError, Images, ListScope, Listing, Missing, ReportMissing};
use crate::names::{ImageAliasName, ImageFingerprint, ProjectName};

/// How long an upload to Incus may take: Incus reads the whole body before it
/// answers with the operation, so `INCUS_TIMEOUT` would cut large images short.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);

fn project_query(project: &str) -> [(&'static str, &str); 1] {
    [("project", project)]
}

/// A file part streamed from disk with its length known up front.
async fn file_part(path: &std::path::Path, size: u64, name: &str) -> Result<Part, BackendError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| anyhow::anyhow!("opening the spooled upload {}: {e}", path.display()))?;
    Part::stream_with_length(file, size)
        .file_name(name.to_owned())
        .mime_str("application/octet-stream")
        .map_err(|e| BackendError::Internal(e.into()))
}

#[async_trait::async_trait]
impl Images for IncusBackend {
    async fn list_images(&self, scope: ListScope<'_>) -> Result<Listing<Image>, BackendError> {
        let mut q: Vec<(&str, &str)> = vec![("recursion", if scope.expand { "1" } else { "0" })];
        match scope.project {
            Some(p) => q.push(("project", p)),
            None => q.push(("all-projects", "true")),
        }
        if let Some(f) = scope.filter {
            q.push(("filter", f));
        }
        if scope.expand {
            let (items, _): (Vec<Image>, _) = self.client.query_struct(&["images"], &q).await?;
            Ok(Listing::Full(items))
        } else {
            let (urls, _): (Vec<String>, _) = self.client.query_struct(&["images"], &q).await?;
            Ok(Listing::Names(
                urls.iter().map(|u| last_segment(u)).collect(),
            ))
        }
    }

    async fn get_image(
        &self,
        project: &ProjectName,
        fingerprint: &ImageFingerprint,
    ) -> Result<(Image, Option<String>), BackendError> {
        self.client
            .query_struct(&["images", fingerprint.as_str()], &project_query(project))
            .await
            .missing(|| Missing::image(fingerprint))
    }

    async fn delete_image(
        &self,
        project: &ProjectName,
        fingerprint: &ImageFingerprint,
    ) -> Result<Operation, BackendError> {
        self.client
            .query_operation(
                Method::DELETE,
                &["images", fingerprint.as_str()],
                &project_query(project),
                None,
                None,
            )
            .await
            .missing(|| Missing::image(fingerprint))
    }

    async fn copy_image(
        &self,
        project: &ProjectName,
        req: &ImageCopy,
    ) -> Result<Operation, BackendError> {
        let mut source = json!({
            "type": "image",
            "mode": "pull",
            "server": req.source.server,
            "protocol": req.source.protocol,
        });
        if let Some(a) = &req.source.alias {
            source["alias"] = json!(a);
        }
        if let Some(f) = &req.source.fingerprint {
            source["fingerprint"] = json!(f);
        }
        if let Some(t) = &req.source.image_type {
            source["image_type"] = json!(t);
        }
        let aliases: Vec<_> = req
            .aliases
            .iter()
            .map(|a| json!({"name": a.name, "description": a.description.as_deref().unwrap_or_default()}))
            .collect();
        let body = json!({
            "source": source,
            "aliases": aliases,
            "public": req.public,
            "auto_update": req.auto_update,
        });
        self.client
            .query_operation(
                Method::POST,
                &["images"],
                &project_query(project),
                Some(&body),
                None,
            )
            .await
    }

    /// Incus publishes by itself (`POST /1.0/images` with an instance or
    /// snapshot source); it refuses a running instance.
    async fn publish_image(
        &self,
        project: &ProjectName,
        from: &PublishFrom,
        req: &ImagePublish,
    ) -> Result<Operation, BackendError> {
        let (kind, name) = match &from.snapshot {
            Some(snap) => ("snapshot", format!("{}/{snap}", from.instance)),
            None => ("instance", from.instance.to_string()),
        };
        let aliases: Vec<_> = req
            .aliases
            .iter()
            .map(|a| json!({"name": a.name, "description": a.description.as_deref().unwrap_or_default()}))
            .collect();
        let body = json!({
            "source": {"type": kind, "name": name, "project": from.project},
            "aliases": aliases,
            "properties": req.properties,
            "public": req.public,
        });
        let missing = || match &from.snapshot {
            Some(snap) => Missing::snapshot(&from.instance, snap),
            None => Missing::instance(&from.instance),
        };
        // Incus takes a publish of a missing source and fails its operation
        // at once: a clear 404 first instead.
        let source: Vec<&str> = match &from.snapshot {
            Some(snap) => vec![
                "instances",
                from.instance.as_str(),
                "snapshots",
                snap.as_str(),
            ],
            None => vec!["instances", from.instance.as_str()],
        };
        self.client
            .query(
                Method::GET,
                &source,
                &project_query(&from.project),
                None,
                None,
            )
            .await
            .missing(missing)?;
        self.client
            .query_operation(
                Method::POST,
                &["images"],
                &project_query(project),
                Some(&body),
                None,
            )
            .await
            .missing(missing)
    }

    async fn export_image(
        &self,
        project: &ProjectName,
        fingerprint: &ImageFingerprint,
    ) -> Result<Download, BackendError> {
        let resp = self
            .client
            .raw_stream(
                Method::GET,
                &["images", fingerprint.as_str(), "export"],
                &project_query(project),
                reqwest::header::HeaderMap::new(),
                None,
                TRANSFER_TIMEOUT,
            )
            .await
            .missing(|| Missing::image(fingerprint))?;
        Ok(download(resp))
    }

    /// Incus's own split-image upload: `multipart/form-data` with `metadata`
    /// then `rootfs` (`rootfs.img` for a VM disk), streamed from the files.
    async fn import_image(
        &self,
        project: &ProjectName,
        upload: &ImageUpload,
    ) -> Result<Operation, BackendError> {
        let rootfs_part = if upload.virtual_machine {
            "rootfs.img"
        } else {
            "rootfs"
        };
        let form = Form::new()
            .part(
                "metadata",
                file_part(
                    &upload.metadata,
                    upload.metadata_size,
                    &upload.metadata_name,
                )
                .await?,
            )
            .part(
                rootfs_part,
                file_part(&upload.rootfs, upload.rootfs_size, &upload.rootfs_name).await?,
            );
        // Incus checks the fingerprint it computes against this one.
        let mut headers = vec![("X-Incus-fingerprint", upload.fingerprint.clone())];
        if upload.public {
            headers.push(("X-Incus-public", "true".to_owned()));
        }
        if !upload.aliases.is_empty() {
            let mut enc = form_urlencoded::Serializer::new(String::new());
            for a in &upload.aliases {
                enc.append_pair("alias", a);
            }
            headers.push(("X-Incus-aliases", enc.finish()));
        }
        let r = self
            .client
            .query_multipart(
                &["images"],
                &project_query(project),
                form,
                &headers,
                UPLOAD_TIMEOUT,
            )
            .await?;
        r.into_operation(project)
    }

    async fn list_image_aliases(
        &self,
        project: &ProjectName,
        expand: bool,
    ) -> Result<Listing<ImageAliasesEntry>, BackendError> {
        let q = [
            ("recursion", if expand { "1" } else { "0" }),
            ("project", project),
        ];
        if expand {
            let (items, _): (Vec<ImageAliasesEntry>, _) =
                self.client.query_struct(&["images", "aliases"], &q).await?;
            Ok(Listing::Full(items))
        } else {
            let (urls, _): (Vec<String>, _) =
                self.client.query_struct(&["images", "aliases"], &q).await?;
            Ok(Listing::Names(
                urls.iter().map(|u| last_segment(u)).collect(),
            ))
        }
    }

    async fn get_image_alias(
        &self,
        project: &ProjectName,
        name: &ImageAliasName,
    ) -> Result<ImageAliasesEntry, BackendError> {
        self.client
            .query_struct(
                &["images", "aliases", name.as_str()],
                &project_query(project),
            )
            .await
            .missing(|| Missing::image_alias(name))
            .map(|(a, _)| a)
    }

    async fn create_image_alias(
        &self,
        project: &ProjectName,
        req: &ImageAliasCreate,
    ) -> Result<(), BackendError> {
        let body = json!({
            "name": req.name,
            "target": req.target,
            "description": req.description.as_deref().unwrap_or_default(),
        });
        self.client
            .query(
                Method::POST,
                &["images", "aliases"],
                &project_query(project),
                Some(&body),
                None,
            )
            .await
            .missing(|| Missing::AliasTarget {
                project: project.to_string(),
                target: req.target.clone(),
            })
            .map(|_| ())
    }

    async fn delete_image_alias(
        &self,
        project: &ProjectName,
        name: &ImageAliasName,
    ) -> Result<(), BackendError> {
        self.client
            .query(
                Method::DELETE,
                &["images", "aliases", name.as_str()],
                &project_query(project),
                None,
                None,
            )
            .await
            .missing(|| Missing::image_alias(name))
            .map(|_| ())
    }
}
