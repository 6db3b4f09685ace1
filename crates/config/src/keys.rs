//! The schema's key names, taken from the schema itself: serde hands a
//! struct's field names to the deserializer, so a deserializer that only
//! records them lists every key without a hand-kept copy that could drift.

use serde::Deserialize as _;
use serde::de::{self, Visitor};

use crate::ConfigFile;

/// Every key [`ConfigFile`] accepts, as written in the file.
pub fn keys() -> &'static [&'static str] {
    let mut names = None;
    // Always an error: the recorder has no data to give, only a question.
    let _ = ConfigFile::deserialize(NameRecorder(&mut names));
    names.unwrap_or(&[])
}

struct NameRecorder<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for NameRecorder<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only struct field names are recorded"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("field names recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}
