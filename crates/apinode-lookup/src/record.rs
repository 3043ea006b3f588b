//! The records lookups read their key inputs from: a JSON object (`serde_json::Map`), or a
//! [`JsonRecord`] parsed from a request's text without building a `serde_json::Value` tree
//! (its names and strings borrowed from the text, nothing allocated for a record of up to four
//! scalar fields), which is what a lookup over HTTP needs and nothing more.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::fmt;

/// A JSON value as a lookup reads a key input, borrowed from where the record keeps it.
#[derive(Debug, Clone, Copy)]
pub enum JsonRef<'a> {
    Null,
    Bool(bool),
    Number(&'a Number),
    Str(&'a str),
    /// An array or an object: never a key, named in the error.
    Other(&'a Value),
}

impl<'a> From<&'a Value> for JsonRef<'a> {
    fn from(value: &'a Value) -> JsonRef<'a> {
        match value {
            Value::Null => JsonRef::Null,
            Value::Bool(b) => JsonRef::Bool(*b),
            Value::Number(n) => JsonRef::Number(n),
            Value::String(s) => JsonRef::Str(s),
            other => JsonRef::Other(other),
        }
    }
}

/// The value's JSON text, as `serde_json::Value` writes it.
impl fmt::Display for JsonRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonRef::Null => f.write_str("null"),
            JsonRef::Bool(b) => write!(f, "{b}"),
            JsonRef::Number(n) => write!(f, "{n}"),
            JsonRef::Str(s) => write!(f, "{}", Value::String((*s).to_owned())),
            JsonRef::Other(v) => write!(f, "{v}"),
        }
    }
}

/// Written as the JSON value it is.
impl serde::Serialize for JsonRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            JsonRef::Null => serializer.serialize_unit(),
            JsonRef::Bool(b) => serializer.serialize_bool(*b),
            JsonRef::Number(n) => n.serialize(serializer),
            JsonRef::Str(s) => serializer.serialize_str(s),
            JsonRef::Other(v) => v.serialize(serializer),
        }
    }
}

/// A record lookups read their key inputs from, field by field.
pub trait Record: fmt::Debug {
    /// The field called `name`; `None` when the record has none.
    fn field(&self, name: &str) -> Option<JsonRef<'_>>;

    /// The record as a JSON object, for callers that need a tree.
    fn to_map(&self) -> Map<String, Value>;
}

impl Record for Map<String, Value> {
    fn field(&self, name: &str) -> Option<JsonRef<'_>> {
        self.get(name).map(JsonRef::from)
    }

    fn to_map(&self) -> Map<String, Value> {
        self.clone()
    }
}

/// A JSON object deserialized without a `Value` tree: field names and strings are borrowed
/// from the text when they hold no escapes, numbers and booleans are kept as they are, and
/// only a nested array or object becomes a `Value`. The same fields as the object parsed into
/// a `serde_json::Map` (of a name given twice, the last), in text order.
#[derive(Debug, Default, Clone)]
pub struct JsonRecord<'a> {
    fields: SmallVec<[(Cow<'a, str>, Field<'a>); 4]>,
}

#[derive(Debug, Clone)]
enum Field<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    Other(Value),
}

impl<'a> Field<'a> {
    fn as_json(&self) -> JsonRef<'_> {
        match self {
            Field::Null => JsonRef::Null,
            Field::Bool(b) => JsonRef::Bool(*b),
            Field::Number(n) => JsonRef::Number(n),
            Field::Str(s) => JsonRef::Str(s),
            Field::Other(v) => JsonRef::Other(v),
        }
    }

    fn to_value(&self) -> Value {
        match self {
            Field::Null => Value::Null,
            Field::Bool(b) => Value::Bool(*b),
            Field::Number(n) => Value::Number(n.clone()),
            Field::Str(s) => Value::String(s.as_ref().to_owned()),
            Field::Other(v) => v.clone(),
        }
    }
}

impl JsonRecord<'_> {
    /// Its fields, in text order (a name given twice, twice).
    pub fn fields(&self) -> impl Iterator<Item = (&str, JsonRef<'_>)> {
        self.fields
            .iter()
            .map(|(name, field)| (name.as_ref(), field.as_json()))
    }

    /// How many fields it has (a name given twice, twice).
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

impl Record for JsonRecord<'_> {
    fn field(&self, name: &str) -> Option<JsonRef<'_>> {
        // The last of a name given twice, as `serde_json::Map` keeps it.
        self.fields
            .iter()
            .rev()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_json())
    }

    fn to_map(&self) -> Map<String, Value> {
        self.fields
            .iter()
            .map(|(name, field)| (name.as_ref().to_owned(), field.to_value()))
            .collect()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for JsonRecord<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RecordVisitor(std::marker::PhantomData))
    }
}

struct RecordVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for RecordVisitor<'a> {
    type Value = JsonRecord<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<JsonRecord<'a>, M::Error> {
        let mut record = JsonRecord::default();
        while let Some(BorrowedStr(name)) = map.next_key()? {
            let field: FieldSeed<'a> = map.next_value()?;
            record.fields.push((name, field.0));
        }
        Ok(record)
    }
}

/// A string borrowed from the text when it holds no escapes.
struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for StrVisitor<'a> {
            type Value = BorrowedStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(StrVisitor(std::marker::PhantomData))
    }
}

/// A field's value: scalars as they are, arrays and objects as a `Value`.
struct FieldSeed<'a>(Field<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for FieldSeed<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldVisitor(std::marker::PhantomData))
    }
}

struct FieldVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for FieldVisitor<'a> {
    type Value = FieldSeed<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(FieldSeed(Field::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(FieldSeed(Field::Null))
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(FieldSeed(Field::Bool(b)))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Self::Value, E> {
        Ok(FieldSeed(Field::Number(i.into())))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Self::Value, E> {
        Ok(FieldSeed(Field::Number(u.into())))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Self::Value, E> {
        // Not reached from JSON text, which has no NaN or infinity (serde_json refuses a
        // number out of range); refused rather than turned into something else.
        Number::from_f64(f)
            .map(|n| FieldSeed(Field::Number(n)))
            .ok_or_else(|| E::custom("a number that is not finite"))
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(FieldSeed(Field::Str(Cow::Borrowed(s))))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(FieldSeed(Field::Str(Cow::Owned(s.to_owned()))))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(FieldSeed(Field::Str(Cow::Owned(s))))
    }

    fn visit_seq<S: SeqAccess<'de>>(self, seq: S) -> Result<Self::Value, S::Error> {
        Value::deserialize(de::value::SeqAccessDeserializer::new(seq))
            .map(|v| FieldSeed(Field::Other(v)))
    }

    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
        Value::deserialize(de::value::MapAccessDeserializer::new(map))
            .map(|v| FieldSeed(Field::Other(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parsed(text: &str) -> (JsonRecord<'_>, Map<String, Value>) {
        (
            serde_json::from_str(text).unwrap(),
            serde_json::from_str(text).unwrap(),
        )
    }

    #[test]
    fn reads_the_fields_a_map_reads() {
        let text = r#"{"key": "C0001", "n": -3, "u": 18446744073709551615, "f": 1.5,
            "b": true, "z": null, "esc": "a\"b\u00e9", "arr": [1, {"x": 2}], "obj": {"y": [3]},
            "key": "C0002"}"#;
        let (record, map) = parsed(text);
        for name in [
            "key", "n", "u", "f", "b", "z", "esc", "arr", "obj", "missing",
        ] {
            assert_eq!(
                record.field(name).map(|v| v.to_string()),
                map.field(name).map(|v| v.to_string()),
                "{name}"
            );
        }
        assert_eq!(record.field("key").unwrap().to_string(), "\"C0002\"");
        assert_eq!(record.to_map(), map);
        assert_eq!(record.len(), 10);
    }

    #[test]
    fn borrows_what_needs_no_unescaping() {
        let record: JsonRecord<'_> = serde_json::from_str(r#"{"key": "C1", "e": "a\nb"}"#).unwrap();
        assert!(matches!(
            &record.fields[0],
            (Cow::Borrowed("key"), Field::Str(Cow::Borrowed("C1")))
        ));
        assert!(matches!(&record.fields[1].1, Field::Str(Cow::Owned(s)) if s == "a\nb"));
    }

    #[test]
    fn refuses_what_is_not_an_object() {
        for text in ["[1]", "\"a\"", "3", "{\"a\": }", "{\"a\": 1"] {
            assert!(
                serde_json::from_str::<JsonRecord<'_>>(text).is_err(),
                "{text}"
            );
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the object, the record holds the fields a `Map` of it holds.
        #[test]
        fn agrees_with_serde_json(fields in prop::collection::vec(("[a-c\"\\\\é]{1,3}", json_value()), 0..6)) {
            let mut text = String::from("{");
            for (i, (name, value)) in fields.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&Value::String(name.clone()).to_string());
                text.push(':');
                text.push_str(&value.to_string());
            }
            text.push('}');
            let (record, map) = parsed(&text);
            prop_assert_eq!(record.to_map(), map.clone());
            for (name, _) in &fields {
                prop_assert_eq!(
                    record.field(name).map(|v| v.to_string()),
                    map.field(name).map(|v| v.to_string())
                );
            }
        }
    }
}
