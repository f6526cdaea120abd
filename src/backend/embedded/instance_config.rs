//! An embedded instance's config as lxgate keeps it: the keys the user owns
//! beside those lxgate sets itself, the stored config said honestly, and
//! the root disk every instance gets. A leaf: instances and profiles both
//! read it.

use std::collections::BTreeMap;

use super::driver_types::VM;
use crate::backend::types::{ConfigMap, DevicesMap};
use crate::db::embedded::InstanceRow;

/// Keys lxgate sets itself (`image.*` from the image, `volatile.*`); users
/// neither set nor see them overwritten.
pub(super) fn is_managed(key: &str) -> bool {
    key.starts_with("image.") || key.starts_with("volatile.")
}

/// The part of a config the user owns.
pub(super) fn user_config(config: ConfigMap) -> ConfigMap {
    config.into_iter().filter(|(k, _)| !is_managed(k)).collect()
}

/// An instance's own config as stored, and said honestly for a container
/// made before lxgate mapped ids (privileged, its config never had the key).
pub(super) fn own_config(row: &InstanceRow) -> ConfigMap {
    let mut config: ConfigMap = serde_json::from_str(&row.config).unwrap_or_default();
    if row.privileged != 0 && row.instance_type != VM {
        config.insert("security.privileged".into(), "true".into());
    }
    config
}

pub(super) fn root_device() -> DevicesMap {
    BTreeMap::from([(
        "root".to_owned(),
        BTreeMap::from([
            ("type".to_owned(), "disk".to_owned()),
            ("path".to_owned(), "/".to_owned()),
            ("pool".to_owned(), "default".to_owned()),
        ]),
    )])
}
