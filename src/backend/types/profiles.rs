//! Profiles, shaped as Incus's `/1.0/profiles` objects. lxgate reads them to
//! judge what an instance expands to (the instance policy); managing them
//! through lxgate comes later (DESIGN §6 "Next stage").

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
}
