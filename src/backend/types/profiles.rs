//! Profiles, shaped as Incus's `/1.0/profiles` objects, and what an
//! instance's profiles expand to (one rule for both backends and for the
//! instance policy, so what lxgate judges is what runs).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::storage::null_as_default;
use super::{ConfigMap, DevicesMap};

/// A profile: config and devices that instances listing it inherit, in
/// order, under their own.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Profile {
    #[schema(example = "default")]
    pub name: String,
    pub description: String,
    #[serde(deserialize_with = "null_as_default")]
    #[schema(value_type = super::schema::ConfigMap)]
    pub config: ConfigMap,
    #[serde(deserialize_with = "null_as_default")]
    #[schema(value_type = super::schema::DevicesMap)]
    pub devices: DevicesMap,
    /// `/1.0/instances/...` URLs of the instances using the profile
    /// (`?project=` names the project when it is not `default`).
    #[serde(deserialize_with = "null_as_default")]
    pub used_by: Vec<String>,
    /// The project the profile belongs to: the one asked about, or
    /// `default` for an Incus project without profiles of its own
    /// (`features.profiles=false`).
    #[schema(example = "default")]
    pub project: String,
}

/// `POST /api/v1/profiles`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"name": "small", "description": "Small containers", "config": {"limits.cpu": "1", "limits.memory": "256MiB"}}))]
#[serde(deny_unknown_fields)]
pub struct ProfileCreate {
    #[schema(value_type = crate::api::schemas::NewProfileName, example = "small")]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    #[schema(value_type = super::schema::ConfigMap)]
    pub config: ConfigMap,
    #[serde(default)]
    #[schema(value_type = super::schema::DevicesMap)]
    pub devices: DevicesMap,
}

/// `PUT /api/v1/profiles/{name}` (full: left-out fields are emptied, as in
/// Incus) and `PATCH` (only the given fields; config keys are merged, and
/// devices by name).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::schema::ConfigMap>)]
    pub config: Option<ConfigMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::schema::DevicesMap>)]
    pub devices: Option<DevicesMap>,
}

impl Profile {
    /// The profile once `update` is applied the way Incus applies it: a PUT
    /// (`replace`) empties what it leaves out; a PATCH keeps it, merging
    /// config keys and replacing devices by name.
    pub fn updated(&self, update: &ProfileUpdate, replace: bool) -> Profile {
        let mut p = self.clone();
        if replace {
            p.description = update.description.clone().unwrap_or_default();
            p.config = update.config.clone().unwrap_or_default();
            p.devices = update.devices.clone().unwrap_or_default();
            return p;
        }
        if let Some(d) = &update.description {
            p.description = d.clone();
        }
        if let Some(c) = &update.config {
            p.config
                .extend(c.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if let Some(d) = &update.devices {
            p.devices
                .extend(d.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        p
    }
}

/// What an instance's config and devices come to: its profiles' in order,
/// each over the ones before, then its own over them. A device is replaced
/// whole, never merged option by option (as Incus expands them; a `none`
/// device of the instance masks a profile's). An empty value is no value
/// (Incus never stores one: `""` unsets a key), so it masks nothing: an
/// instance's `"raw.lxc": ""` leaves a profile's `raw.lxc` in force.
pub fn expand<'a>(
    profiles: impl IntoIterator<Item = &'a Profile>,
    config: &ConfigMap,
    devices: &DevicesMap,
) -> (ConfigMap, DevicesMap) {
    let (mut c, mut d) = (ConfigMap::new(), DevicesMap::new());
    let set = |m: &ConfigMap| {
        m.iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    for p in profiles {
        c.extend(set(&p.config));
        d.extend(p.devices.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    c.extend(set(config));
    d.extend(devices.iter().map(|(k, v)| (k.clone(), v.clone())));
    (c, d)
}

/// The instance a `used_by` URL names, with its project:
/// `/1.0/instances/web?project=team` -> `("team", "web")`. Other objects
/// (snapshots, anything not an instance) are `None`.
pub fn instance_of_url(url: &str) -> Option<(String, String)> {
    let parsed = url::Url::parse("http://incus").ok()?.join(url).ok()?;
    let segments: Vec<String> = parsed
        .path_segments()?
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let [v, kind, name] = segments.as_slice() else {
        return None;
    };
    if v != "1.0" || kind != "instances" || name.is_empty() {
        return None;
    }
    let project = parsed
        .query_pairs()
        .find(|(k, _)| k == "project")
        .map_or_else(|| "default".to_owned(), |(_, v)| v.into_owned());
    Some((project, name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> ConfigMap {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn profiles_apply_in_order_under_the_instance() {
        let base = Profile {
            name: "base".into(),
            config: map(&[("limits.cpu", "1"), ("limits.memory", "1GiB")]),
            devices: DevicesMap::from([(
                "root".into(),
                map(&[("type", "disk"), ("path", "/"), ("pool", "default")]),
            )]),
            ..Default::default()
        };
        let big = Profile {
            name: "big".into(),
            config: map(&[("limits.memory", "4GiB")]),
            devices: DevicesMap::from([(
                "root".into(),
                map(&[("type", "disk"), ("path", "/"), ("pool", "fast")]),
            )]),
            ..Default::default()
        };
        let own = map(&[("limits.cpu", "2")]);
        let own_devices = DevicesMap::from([("x".into(), map(&[("type", "none")]))]);
        let (c, d) = expand([&base, &big], &own, &own_devices);
        assert_eq!(c, map(&[("limits.cpu", "2"), ("limits.memory", "4GiB")]));
        // Replaced whole: the later profile's root disk, not a merge.
        assert_eq!(d["root"]["pool"], "fast");
        assert_eq!(d["x"]["type"], "none");
        let (c, _) = expand([&big, &base], &ConfigMap::new(), &DevicesMap::new());
        assert_eq!(c["limits.memory"], "1GiB");
        // An empty value masks nothing (Incus stores none): the profile's
        // key stays in force, where the policy sees it.
        let raw = Profile {
            name: "raw".into(),
            config: map(&[("raw.lxc", "lxc.apparmor.profile=unconfined")]),
            ..Default::default()
        };
        let (c, _) = expand([&raw], &map(&[("raw.lxc", "")]), &DevicesMap::new());
        assert_eq!(c["raw.lxc"], "lxc.apparmor.profile=unconfined");
    }

    #[test]
    fn put_empties_and_patch_merges() {
        let p = Profile {
            name: "p".into(),
            description: "d".into(),
            config: map(&[("a", "1"), ("b", "2")]),
            devices: DevicesMap::from([("n".into(), map(&[("type", "none")]))]),
            ..Default::default()
        };
        let u = ProfileUpdate {
            config: Some(map(&[("b", "3")])),
            ..Default::default()
        };
        let patched = p.updated(&u, false);
        assert_eq!(patched.config, map(&[("a", "1"), ("b", "3")]));
        assert_eq!(patched.description, "d");
        assert_eq!(patched.devices.len(), 1);
        let put = p.updated(&u, true);
        assert_eq!(put.config, map(&[("b", "3")]));
        assert_eq!(put.description, "");
        assert!(put.devices.is_empty());
    }

    #[test]
    fn used_by_urls_name_instances() {
        assert_eq!(
            instance_of_url("/1.0/instances/web"),
            Some(("default".into(), "web".into()))
        );
        assert_eq!(
            instance_of_url("/1.0/instances/web?project=team-a"),
            Some(("team-a".into(), "web".into()))
        );
        assert_eq!(
            instance_of_url("/1.0/instances/a%20b?project=p"),
            Some(("p".into(), "a b".into()))
        );
        assert_eq!(instance_of_url("/1.0/instances/web/snapshots/s"), None);
        assert_eq!(instance_of_url("/1.0/profiles/web"), None);
        assert_eq!(instance_of_url("/1.0/instances"), None);
    }
}
