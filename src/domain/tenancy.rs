//! The tenant tree: who may act where. A user acts only inside their root tenant's subtree.

use std::collections::HashMap;

/// The ids from `tenant` up to the top of its tree, nearest first, as stored `(id, parent)`.
///
/// Stops at a missing parent or at a cycle (bad data must not hang a request).
pub fn ancestry<'a>(parents: &'a HashMap<String, Option<String>>, tenant: &'a str) -> Vec<&'a str> {
    let mut chain = Vec::new();
    let mut current = Some(tenant);
    while let Some(id) = current {
        let Some((key, parent)) = parents.get_key_value(id) else {
            break;
        };
        if chain.contains(&key.as_str()) {
            break;
        }
        chain.push(key.as_str());
        current = parent.as_deref();
    }
    chain
}

/// Whether `tenant` is `root` or one of its descendants, given `tenant`'s ancestry.
pub fn is_within(ancestry_of_tenant: &[impl AsRef<str>], root: &str) -> bool {
    ancestry_of_tenant.iter().any(|id| id.as_ref() == root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> HashMap<String, Option<String>> {
        [
            ("demo", None),
            ("demo-east", Some("demo")),
            ("demo-east-1", Some("demo-east")),
            ("acme", None),
            ("loop-a", Some("loop-b")),
            ("loop-b", Some("loop-a")),
        ]
        .into_iter()
        .map(|(id, parent)| (id.to_owned(), parent.map(str::to_owned)))
        .collect()
    }

    #[test]
    fn a_tenant_is_within_itself_and_its_ancestors() {
        let tree = tree();
        let chain = ancestry(&tree, "demo-east-1");
        assert_eq!(chain, ["demo-east-1", "demo-east", "demo"]);
        assert!(is_within(&chain, "demo"));
        assert!(is_within(&chain, "demo-east"));
        assert!(is_within(&chain, "demo-east-1"));
    }

    #[test]
    fn another_root_or_a_child_is_not_an_ancestor() {
        let tree = tree();
        assert!(!is_within(&ancestry(&tree, "demo-east"), "acme"));
        assert!(!is_within(&ancestry(&tree, "demo"), "demo-east"));
        assert!(!is_within(&ancestry(&tree, "acme"), "demo"));
    }

    #[test]
    fn an_unknown_tenant_is_within_nothing() {
        let tree = tree();
        assert!(ancestry(&tree, "nope").is_empty());
        assert!(!is_within(&ancestry(&tree, "nope"), "nope"));
    }

    #[test]
    fn a_cycle_in_bad_data_terminates() {
        let tree = tree();
        assert_eq!(ancestry(&tree, "loop-a"), ["loop-a", "loop-b"]);
    }
}
