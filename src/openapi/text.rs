//! Request text never holds U+0000 (`api::no_nul` refuses it, 422): said
//! in the schema of every free-text string a request body can carry, so
//! what the schema allows is what lxgate takes.
//!
//! "Free text" is a string the schema does not already bound by a pattern,
//! an enum or a format (other than `password`), and the keys of
//! free-form maps (`config`, device options). Components reached from a
//! request body change where they are defined (a response never holds a NUL
//! either, so the shared definition stays true for both).

use std::collections::BTreeSet;

use utoipa::openapi::schema::{AdditionalProperties, ArrayItems, KnownFormat, SchemaFormat};
use utoipa::openapi::{ObjectBuilder, OpenApi, RefOr, Schema, Type};

/// `^[^\u0000]*$` as JSON Schema's (ECMA-262) regular expressions spell it.
pub const NO_NUL: &str = "^[^\\u0000]*$";

pub fn forbid_nul(doc: &mut OpenApi) {
    // The components a request body reaches, through other components too.
    let mut reached = BTreeSet::new();
    let mut pending: Vec<String> = Vec::new();
    for item in doc.paths.paths.values() {
        for op in [&item.put, &item.post, &item.patch, &item.delete, &item.get]
            .into_iter()
            .flatten()
        {
            if let Some(RefOr::T(body)) = &op.request_body {
                for content in body.content.values() {
                    if let RefOr::T(content) = content
                        && let Some(schema) = &content.schema
                    {
                        refs(schema, &mut pending);
                    }
                }
            }
        }
    }
    let components = doc.components.get_or_insert_with(Default::default);
    while let Some(name) = pending.pop() {
        if reached.insert(name.clone())
            && let Some(schema) = components.schemas.get(&name)
        {
            refs(schema, &mut pending);
        }
    }
    for name in &reached {
        if let Some(schema) = components.schemas.get_mut(name) {
            mark(schema);
        }
    }
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.put,
            &mut item.post,
            &mut item.patch,
            &mut item.delete,
            &mut item.get,
        ]
        .into_iter()
        .flatten()
        {
            if let Some(RefOr::T(body)) = &mut op.request_body {
                for content in body.content.values_mut() {
                    if let RefOr::T(content) = content
                        && let Some(schema) = &mut content.schema
                    {
                        mark(schema);
                    }
                }
            }
        }
    }
}

/// The component names `schema` refers to.
fn refs(schema: &RefOr<Schema>, out: &mut Vec<String>) {
    match schema {
        RefOr::Ref(r) => {
            if let Some(name) = r.ref_location.strip_prefix("#/components/schemas/") {
                out.push(name.to_owned());
            }
        }
        RefOr::T(schema) => each_child(schema, |child| refs(child, out)),
    }
}

fn each_child(schema: &Schema, mut f: impl FnMut(&RefOr<Schema>)) {
    match schema {
        Schema::Object(o) => {
            o.properties.values().for_each(&mut f);
            if let Some(extra) = &o.additional_properties
                && let AdditionalProperties::RefOr(s) = extra.as_ref()
            {
                f(s);
            }
        }
        Schema::Array(a) => {
            if let ArrayItems::RefOrSchema(items) = &a.items {
                f(items);
            }
        }
        Schema::OneOf(x) => x.items.iter().for_each(f),
        Schema::AllOf(x) => x.items.iter().for_each(f),
        Schema::AnyOf(x) => x.items.iter().for_each(f),
        _ => {}
    }
}

/// Adds the pattern to the free-text strings of an inline schema (a `$ref`
/// is marked where its component is).
fn mark(schema: &mut RefOr<Schema>) {
    let RefOr::T(schema) = schema else {
        return;
    };
    match schema {
        Schema::Object(o) => {
            let is_string = match &o.schema_type {
                utoipa::openapi::schema::SchemaType::Type(t) => *t == Type::String,
                utoipa::openapi::schema::SchemaType::Array(ts) => ts.contains(&Type::String),
                utoipa::openapi::schema::SchemaType::AnyValue => false,
            };
            let bounded_format = match &o.format {
                None | Some(SchemaFormat::KnownFormat(KnownFormat::Password)) => false,
                Some(_) => true,
            };
            if is_string && o.pattern.is_none() && o.enum_values.is_none() && !bounded_format {
                o.pattern = Some(NO_NUL.to_owned());
            }
            for child in o.properties.values_mut() {
                mark(child);
            }
            if let Some(extra) = &mut o.additional_properties
                && let AdditionalProperties::RefOr(s) = extra.as_mut()
            {
                mark(s);
                match o.property_names.as_deref_mut() {
                    None => {
                        o.property_names = Some(Box::new(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .pattern(Some(NO_NUL))
                                .build()
                                .into(),
                        ));
                    }
                    Some(Schema::Object(keys)) if keys.pattern.is_none() => {
                        keys.pattern = Some(NO_NUL.to_owned());
                    }
                    Some(_) => {}
                }
            }
        }
        Schema::Array(a) => {
            if let ArrayItems::RefOrSchema(items) = &mut a.items {
                mark(items);
            }
        }
        Schema::OneOf(x) => x.items.iter_mut().for_each(mark),
        Schema::AllOf(x) => x.items.iter_mut().for_each(mark),
        Schema::AnyOf(x) => x.items.iter_mut().for_each(mark),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::NO_NUL;

    /// Every free-text string of every request body says it takes no NUL;
    /// the names, enums and formats keep their own bounds.
    #[test]
    fn request_text_is_nul_free_in_the_schema() {
        let doc = serde_json::to_value(crate::router::openapi()).unwrap();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["ConfigMap"]["additionalProperties"]["pattern"],
            NO_NUL
        );
        assert_eq!(schemas["ConfigMap"]["propertyNames"]["pattern"], NO_NUL);
        for (component, field) in [
            ("NetworkCreate", "description"),
            ("InstanceUpdate", "description"),
            ("LoginRequest", "password"),
        ] {
            assert_eq!(
                schemas[component]["properties"][field]["pattern"], NO_NUL,
                "{component}.{field}"
            );
        }
        // A name keeps its own pattern.
        assert_ne!(schemas["InstanceName"]["pattern"], NO_NUL);
        // Response-only components are left as they are.
        assert!(schemas["Operation"]["properties"]["description"]["pattern"].is_null());
    }
}
