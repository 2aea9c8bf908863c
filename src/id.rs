//! Identifiers as types: a license id cannot be passed where a seat id is
//! expected. Each is a string on the wire and in the log (`serde(transparent)`),
//! so typing them changed no stored byte.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> $name {
                $name(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> $name {
                $name(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> $name {
                $name(id.to_owned())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id_type!(
    /// A license, `lic_` and 16 hex digits.
    LicenseId
);
id_type!(
    /// A seat of a license, `seat_` and a random id.
    SeatId
);
id_type!(
    /// A product, chosen by the vendor (see [`crate::product::valid_product_id`]).
    ProductId
);
id_type!(
    /// An API key (its id, never the key).
    ApiKeyId
);
id_type!(
    /// A meter, chosen by the vendor.
    MeterSlug
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_strings_in_json_and_postcard() {
        let id = LicenseId::new("lic_0123456789abcdef");
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"lic_0123456789abcdef\""
        );
        assert_eq!(
            postcard::to_allocvec(&id).unwrap(),
            postcard::to_allocvec("lic_0123456789abcdef").unwrap()
        );
        let back: LicenseId = serde_json::from_str("\"lic_0123456789abcdef\"").unwrap();
        assert_eq!(back, id);
    }
}
