//! The two JSON spellings of the API's answers, in one place. Views are serialised once, with
//! the contract's keys (`spec`); the `camel` spelling is the same serialisation with the keys
//! of [`CAMEL`] renamed on the way out, by a serializer that wraps serde_json's and maps
//! struct field names and map keys through that table (no copy of a key, no allocation).

use serde::Deserialize;
use serde::ser::{self, Impossible, Serialize, Serializer};

/// Which spelling responses use. Requests are accepted in both, always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiStyle {
    /// The keys of the API contract (`RequestId`, `Regions`, `MECRegionInfo`, `Protocol`, ...).
    Spec,
    /// The keys the MTP's Java client reads (`requestId`, `regions`, `mecRegionInfo`, ...).
    Camel,
}

/// The keys the MTP's Java client spells differently from the contract: (spec, camel). Every
/// other key is the same in both spellings (`/work/shared/reference/northbound-dialects.md`).
/// Keys inside free-form objects are the caller's and are never renamed.
pub const CAMEL: [(&str, &str); 7] = [
    ("RequestId", "requestId"),
    ("RegionId", "regionId"),
    ("Regions", "regions"),
    ("MECRegionInfo", "mecRegionInfo"),
    ("LocationInfo", "locationInfo"),
    ("Protocol", "protocol"),
    ("Token", "token"),
];

/// The camel spelling of `spec`, if the table renames it. Every key of the table starts with
/// an upper-case letter and nearly every other key with a lower-case one: those are passed
/// over at their first byte.
fn camel(spec: &str) -> Option<&'static str> {
    if !spec.as_bytes().first().is_some_and(u8::is_ascii_uppercase) {
        return None;
    }
    CAMEL.iter().find(|(s, _)| *s == spec).map(|(_, c)| *c)
}

impl ApiStyle {
    /// The contract's key `spec` in this spelling.
    pub fn key(self, spec: &'static str) -> &'static str {
        match self {
            ApiStyle::Spec => spec,
            ApiStyle::Camel => camel(spec).unwrap_or(spec),
        }
    }

    /// Whether JSON text written in the spec spelling may hold a key this spelling renames
    /// (conservatively: any string equal to one counts, a value or a free-form key too). One
    /// pass over the text: only strings that start with an upper-case letter, as every key of
    /// the table does, are compared with it.
    pub fn may_rename(self, spec_json: &str) -> bool {
        self == ApiStyle::Camel
            && spec_json.match_indices('"').any(|(at, _)| {
                let rest = &spec_json.as_bytes()[at + 1..];
                rest.first().is_some_and(u8::is_ascii_uppercase)
                    && CAMEL.iter().any(|(spec, _)| {
                        rest.starts_with(spec.as_bytes()) && rest.get(spec.len()) == Some(&b'"')
                    })
            })
    }

    /// `value`'s JSON in this spelling. The one way views are written (a streamed listing
    /// too, a record at a time), so that each view's serialising code is compiled for one
    /// writer type only (a second one cost 35 kB of the binary; issue 11 item 8).
    pub fn to_vec<T: Serialize + ?Sized>(self, value: &T) -> serde_json::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(128);
        match self {
            ApiStyle::Spec => serde_json::to_writer(&mut out, value)?,
            ApiStyle::Camel => serde_json::to_writer(&mut out, &Camel(value))?,
        }
        Ok(out)
    }
}

/// `T` serialised with the camel spelling's keys.
struct Camel<'a, T: ?Sized>(&'a T);

impl<T: Serialize + ?Sized> Serialize for Camel<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(Renaming(serializer))
    }
}

/// A serializer (or one of its compound serializers) that hands everything to the one it
/// wraps, with struct field names and map keys renamed through [`CAMEL`]. Struct and field
/// names that are no key of the table pass unchanged, serde_json's private markers of raw
/// values and exact numbers included, so free-form objects and numbers come out as kept.
struct Renaming<S>(S);

/// Methods passed on unchanged.
macro_rules! pass_on {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(fn $method(self, $($arg: $ty),*) -> Result<S::Ok, S::Error> {
            self.0.$method($($arg),*)
        })*
    };
}

impl<S: Serializer> Serializer for Renaming<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Renaming<S::SerializeSeq>;
    type SerializeTuple = Renaming<S::SerializeTuple>;
    type SerializeTupleStruct = Renaming<S::SerializeTupleStruct>;
    type SerializeTupleVariant = Renaming<S::SerializeTupleVariant>;
    type SerializeMap = Renaming<S::SerializeMap>;
    type SerializeStruct = Renaming<S::SerializeStruct>;
    type SerializeStructVariant = Renaming<S::SerializeStructVariant>;

    pass_on! {
        serialize_bool(v: bool);
        serialize_i8(v: i8);
        serialize_i16(v: i16);
        serialize_i32(v: i32);
        serialize_i64(v: i64);
        serialize_i128(v: i128);
        serialize_u8(v: u8);
        serialize_u16(v: u16);
        serialize_u32(v: u32);
        serialize_u64(v: u64);
        serialize_u128(v: u128);
        serialize_f32(v: f32);
        serialize_f64(v: f64);
        serialize_char(v: char);
        serialize_str(v: &str);
        serialize_bytes(v: &[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(name: &'static str);
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.0.serialize_some(&Camel(value))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_newtype_struct(name, &Camel(value))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0
            .serialize_newtype_variant(name, index, variant, &Camel(value))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        self.0.serialize_seq(len).map(Renaming)
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        self.0.serialize_tuple(len).map(Renaming)
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        self.0.serialize_tuple_struct(name, len).map(Renaming)
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        let inner = self.0.serialize_tuple_variant(name, index, variant, len);
        inner.map(Renaming)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        self.0.serialize_map(len).map(Renaming)
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        self.0.serialize_struct(name, len).map(Renaming)
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        let inner = self.0.serialize_struct_variant(name, index, variant, len);
        inner.map(Renaming)
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// The compound serializers whose items are elements or positional fields: each item is
/// serialised renamed.
macro_rules! items_renamed {
    ($($trait:ident::$method:ident),*) => {
        $(impl<C: ser::$trait> ser::$trait for Renaming<C> {
            type Ok = C::Ok;
            type Error = C::Error;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
                self.0.$method(&Camel(value))
            }

            fn end(self) -> Result<C::Ok, C::Error> {
                self.0.end()
            }
        })*
    };
}

items_renamed!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// The compound serializers with named fields: each name goes through the table.
macro_rules! fields_renamed {
    ($($trait:ident),*) => {
        $(impl<C: ser::$trait> ser::$trait for Renaming<C> {
            type Ok = C::Ok;
            type Error = C::Error;

            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), C::Error> {
                self.0.serialize_field(ApiStyle::Camel.key(key), &Camel(value))
            }

            fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
                self.0.skip_field(ApiStyle::Camel.key(key))
            }

            fn end(self) -> Result<C::Ok, C::Error> {
                self.0.end()
            }
        })*
    };
}

fields_renamed!(SerializeStruct, SerializeStructVariant);

/// Maps: a key that is a string of the table is renamed (a struct flattened into another,
/// such as the caller's request into a record's view, writes its fields as map keys).
impl<C: ser::SerializeMap> ser::SerializeMap for Renaming<C> {
    type Ok = C::Ok;
    type Error = C::Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), C::Error> {
        self.0.serialize_key(&MapKey(key))
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        self.0.serialize_value(&Camel(value))
    }

    fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), C::Error> {
        self.0.serialize_entry(&MapKey(key), &Camel(value))
    }

    fn end(self) -> Result<C::Ok, C::Error> {
        self.0.end()
    }
}

/// A map key, renamed when it is a string of the table.
struct MapKey<'a, T: ?Sized>(&'a T);

impl<T: Serialize + ?Sized> Serialize for MapKey<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.serialize(RenamedKey) {
            Ok(Some(renamed)) => serializer.serialize_str(renamed),
            _ => self.0.serialize(serializer),
        }
    }
}

/// Finds a key's camel spelling: `Some` for a string of the table, `None` for anything else.
struct RenamedKey;

type Found = Result<Option<&'static str>, serde::de::value::Error>;

/// Methods that find nothing: the key is no string.
macro_rules! not_a_string {
    ($($method:ident($($ty:ty),*);)*) => {
        $(fn $method(self, $(_: $ty),*) -> Found {
            Ok(None)
        })*
    };
}

/// Methods of compound values, which no key of the table is.
macro_rules! not_a_key {
    ($($method:ident($($ty:ty),*) -> $ret:ident;)*) => {
        $(fn $method(self, $(_: $ty),*) -> Result<Self::$ret, Self::Error> {
            Err(ser::Error::custom("not a key"))
        })*
    };
}

impl Serializer for RenamedKey {
    type Ok = Option<&'static str>;
    type Error = serde::de::value::Error;
    type SerializeSeq = Impossible<Self::Ok, Self::Error>;
    type SerializeTuple = Impossible<Self::Ok, Self::Error>;
    type SerializeTupleStruct = Impossible<Self::Ok, Self::Error>;
    type SerializeTupleVariant = Impossible<Self::Ok, Self::Error>;
    type SerializeMap = Impossible<Self::Ok, Self::Error>;
    type SerializeStruct = Impossible<Self::Ok, Self::Error>;
    type SerializeStructVariant = Impossible<Self::Ok, Self::Error>;

    fn serialize_str(self, v: &str) -> Found {
        Ok(camel(v))
    }

    not_a_string! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Found {
        Ok(None)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, _: &T) -> Found {
        Ok(None)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Found {
        Ok(None)
    }

    not_a_key! {
        serialize_seq(Option<usize>) -> SerializeSeq;
        serialize_tuple(usize) -> SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> SerializeTupleVariant;
        serialize_map(Option<usize>) -> SerializeMap;
        serialize_struct(&'static str, usize) -> SerializeStruct;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> SerializeStructVariant;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::collections::BTreeMap;

    #[derive(Serialize)]
    struct View<'a> {
        #[serde(rename = "RequestId")]
        id: &'a str,
        #[serde(flatten)]
        inner: Inner,
        list: Vec<Inner>,
        #[serde(rename = "status")]
        status: Option<&'a str>,
    }

    #[derive(Serialize)]
    struct Inner {
        #[serde(rename = "Protocol")]
        protocol: u8,
        #[serde(rename = "Token", skip_serializing_if = "Option::is_none")]
        token: Option<u8>,
        free: Box<serde_json::value::RawValue>,
    }

    fn view() -> View<'static> {
        let free = || serde_json::value::RawValue::from_string(r#"{"Token":1.50}"#.into());
        View {
            id: "RegionId",
            inner: Inner {
                protocol: 1,
                token: Some(2),
                free: free().unwrap(),
            },
            list: vec![Inner {
                protocol: 3,
                token: None,
                free: free().unwrap(),
            }],
            status: Some("Token"),
        }
    }

    #[test]
    fn camel_renames_field_names_and_flattened_keys_but_no_value_or_free_form_key() {
        let spec = String::from_utf8(ApiStyle::Spec.to_vec(&view()).unwrap()).unwrap();
        assert_eq!(
            spec,
            r#"{"RequestId":"RegionId","Protocol":1,"Token":2,"free":{"Token":1.50},"list":[{"Protocol":3,"free":{"Token":1.50}}],"status":"Token"}"#
        );
        let camel = String::from_utf8(ApiStyle::Camel.to_vec(&view()).unwrap()).unwrap();
        assert_eq!(
            camel,
            r#"{"requestId":"RegionId","protocol":1,"token":2,"free":{"Token":1.50},"list":[{"protocol":3,"free":{"Token":1.50}}],"status":"Token"}"#
        );
    }

    #[test]
    fn string_keys_of_maps_are_renamed_and_others_kept() {
        let map: BTreeMap<&str, u8> = [("Regions", 1), ("other", 2)].into();
        let camel = ApiStyle::Camel.to_vec(&map).unwrap();
        assert_eq!(camel, br#"{"regions":1,"other":2}"#);
        let numbers: BTreeMap<u8, &str> = [(1, "Regions")].into();
        assert_eq!(
            ApiStyle::Camel.to_vec(&numbers).unwrap(),
            br#"{"1":"Regions"}"#
        );
    }

    #[test]
    fn every_key_of_the_table_is_renamed_and_no_other() {
        for (spec, camel) in CAMEL {
            assert!(
                spec.as_bytes()[0].is_ascii_uppercase(),
                "see camel(): {spec}"
            );
            assert_eq!(ApiStyle::Camel.key(spec), camel);
            assert_eq!(ApiStyle::Spec.key(spec), spec);
            assert!(ApiStyle::Camel.may_rename(&format!("{{\"{spec}\":1}}")));
            assert!(!ApiStyle::Spec.may_rename(&format!("{{\"{spec}\":1}}")));
        }
        assert_eq!(ApiStyle::Camel.key("appDNSRule"), "appDNSRule");
        assert!(!ApiStyle::Camel.may_rename(r#"{"appDNSRule":[]}"#));
        assert!(!ApiStyle::Camel.may_rename(r#"{"a":"Protocols","b":"Tok","c":"IP_V4"}"#));
        assert!(
            ApiStyle::Camel.may_rename(r#"{"a":"Token"}"#),
            "a value counts too"
        );
    }
}
