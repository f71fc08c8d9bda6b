//! Small serde helpers shared by the object modules.

use serde::{Deserialize, Deserializer};

/// Deserialise `null` (which Go emits for nil maps/slices/pointers) as `T::default()`.
/// Use together with `#[serde(default)]` so a missing key also yields the default.
pub fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

pub(crate) fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
pub(crate) fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
pub(crate) fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
pub(crate) fn is_false(v: &bool) -> bool {
    !*v
}

/// Declares a string enum that (de)serialises as the given wire strings. An empty string
/// deserialises as the `Default` variant (Go sends `""` for unset non-omitempty strings and moby
/// treats it as the default).
macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident { $( $(#[$vm:meta])* $var:ident = $s:literal ),+ $(,)? } default $def:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $( $(#[$vm])* #[doc = $s] $var, )+ }
        impl Default for $name {
            fn default() -> Self { $name::$def }
        }
        impl $name {
            /// All variants in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            /// The wire string.
            pub fn as_str(&self) -> &'static str { match self { $($name::$var => $s,)+ } }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
        impl std::str::FromStr for $name {
            type Err = $crate::ParseEnumError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($name::$var),)+
                    "" => Ok($name::$def),
                    other => Err($crate::ParseEnumError { kind: stringify!($name), value: other.to_string() }),
                }
            }
        }
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> { s.serialize_str(self.as_str()) }
        }
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use str_enum;
