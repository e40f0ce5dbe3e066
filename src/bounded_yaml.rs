//! YAML from a file the agent can write (`config.yaml`, `SKILL.md` front
//! matter), parsed with a bound on what aliases can expand to.
//!
//! serde_yaml_ng 0.10 limits nesting (128 levels) and the number of alias
//! jumps (100 × the document's events), but not what each jump replays:
//! `a: &a [x, x, …]` then `b: [*a, *a, …]` expands quadratically within
//! that limit (a 1 MiB file could ask for ~10¹⁰ nodes). So a first pass
//! only counts the nodes the document expands to, and stops at
//! [`MAX_NODES`]; the real parse runs only on a document under the bound.

use serde::de::{
    DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde_yaml_ng::Value;

/// Most nodes (scalars, sequences, mappings, after alias expansion) a
/// document may expand to.
pub const MAX_NODES: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("the YAML expands to more than {MAX_NODES} nodes (aliases)")]
    TooManyNodes,
    #[error(transparent)]
    Syntax(#[from] serde_yaml_ng::Error),
}

impl YamlError {
    /// Where the parser stopped, when it says (never the message, which
    /// can quote the document).
    pub fn location(&self) -> Option<serde_yaml_ng::Location> {
        match self {
            YamlError::TooManyNodes => None,
            YamlError::Syntax(e) => e.location(),
        }
    }
}

/// Parse `text` into a YAML value, refusing alias bombs.
pub fn from_str(text: &str) -> Result<Value, YamlError> {
    let mut budget = MAX_NODES;
    let counted = Counter {
        budget: &mut budget,
    }
    .deserialize(serde_yaml_ng::Deserializer::from_str(text));
    if let Err(e) = counted {
        return Err(if budget == 0 {
            YamlError::TooManyNodes
        } else {
            YamlError::Syntax(e)
        });
    }
    Ok(serde_yaml_ng::from_str(text)?)
}

/// Visits every node, spending one unit of the budget each; fails when
/// the budget is spent.
struct Counter<'a> {
    budget: &'a mut u64,
}

impl Counter<'_> {
    fn spend<E: serde::de::Error>(&mut self) -> Result<(), E> {
        match self.budget.checked_sub(1) {
            Some(b) if b > 0 => {
                *self.budget = b;
                Ok(())
            }
            _ => {
                *self.budget = 0;
                Err(E::custom("node budget spent"))
            }
        }
    }

    fn again(&mut self) -> Counter<'_> {
        Counter {
            budget: self.budget,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Counter<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

macro_rules! scalar {
    ($($name:ident: $t:ty),*) => {$(
        fn $name<E: serde::de::Error>(mut self, _: $t) -> Result<(), E> {
            self.spend()
        }
    )*};
}

impl<'de> Visitor<'de> for Counter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML node")
    }

    scalar!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_i128: i128,
            visit_u128: u128, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.spend()
    }

    fn visit_none<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.spend()
    }

    fn visit_some<D: Deserializer<'de>>(mut self, d: D) -> Result<(), D::Error> {
        self.spend()?;
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.spend()?;
        while seq.next_element_seed(self.again())?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.spend()?;
        while map.next_key_seed(self.again())?.is_some() {
            map.next_value_seed(self.again())?;
        }
        Ok(())
    }

    /// A tagged node (`!tag value`).
    fn visit_enum<A: EnumAccess<'de>>(mut self, data: A) -> Result<(), A::Error> {
        self.spend()?;
        let ((), variant) = data.variant_seed(self.again())?;
        variant.newtype_variant_seed(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_documents_parse() {
        let v = from_str("a: &x [1, 2]\nb: *x\nc: !tag {k: v}\n").expect("parse");
        assert_eq!(v["b"][1], Value::from(2));
        assert!(from_str("a: [").is_err());
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut doc = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..=9 {
            let refs = vec![format!("*l{}", i - 1); 9].join(", ");
            doc.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
        }
        // serde_yaml_ng's own jump limit stops this one first.
        let r = from_str(&doc);
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn quadratic_alias_fan_out_is_refused() {
        let mut doc = String::from("a: &a [");
        doc.push_str(&vec!["x"; 2000].join(","));
        doc.push_str("]\nb: [");
        doc.push_str(&vec!["*a"; 2000].join(","));
        doc.push_str("]\n");
        assert!(matches!(from_str(&doc), Err(YamlError::TooManyNodes)));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let doc = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
        assert!(matches!(from_str(&doc), Err(YamlError::Syntax(_))));
    }
}
