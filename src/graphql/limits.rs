//! Bounds on the shape of a GraphQL document, checked on the parsed document before
//! async-graphql validates or executes it: both walk fragment spreads one by one, so a 1 KiB
//! document whose fragments spread into each other costs them 2^26 visits.
//!
//! Here every fragment is sized once (memoized), so the check costs the document's length
//! whatever it expands to.

use std::collections::HashMap;

use async_graphql::Name;
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql_value::{ConstValue, Value};

/// The bounds a document must keep, fragments expanded.
#[derive(Clone, Copy, Debug)]
pub struct ShapeLimits {
    /// Fields and fragment spreads.
    pub max_nodes: u64,
    /// Aliased fields.
    pub max_aliases: u64,
    /// Bytes of one string literal.
    pub max_string_bytes: usize,
}

/// Why a document was refused, with the code clients branch on.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("the query expands to more than {0} fields and fragment spreads")]
    TooLarge(u64),
    #[error("the query has more than {0} aliased fields")]
    TooManyAliases(u64),
    #[error("a string argument is longer than {0} bytes")]
    ArgumentTooLong(usize),
    #[error("fragment \"{0}\" spreads into itself")]
    FragmentCycle(String),
}

impl ShapeError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "QUERY_TOO_LARGE",
            Self::TooManyAliases(_) => "TOO_MANY_ALIASES",
            Self::ArgumentTooLong(_) => "ARGUMENT_TOO_LONG",
            Self::FragmentCycle(_) => "GRAPHQL_VALIDATION_FAILED",
        }
    }
}

/// What a selection set expands to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    pub nodes: u64,
    pub aliases: u64,
}

impl Shape {
    fn add(self, other: Shape) -> Shape {
        Shape {
            nodes: self.nodes.saturating_add(other.nodes),
            aliases: self.aliases.saturating_add(other.aliases),
        }
    }
}

enum Sizing {
    InProgress,
    Done(Shape),
}

struct Walker<'a> {
    doc: &'a ExecutableDocument,
    limits: ShapeLimits,
    fragments: HashMap<&'a Name, Sizing>,
}

/// Sizes every operation of `doc` (together) and refuses it past `limits`.
pub fn check_document(doc: &ExecutableDocument, limits: ShapeLimits) -> Result<Shape, ShapeError> {
    let mut walker = Walker {
        doc,
        limits,
        fragments: HashMap::new(),
    };
    let mut total = Shape::default();
    for (_, operation) in doc.operations.iter() {
        for variable in &operation.node.variable_definitions {
            if let Some(default) = &variable.node.default_value {
                check_const_strings(&default.node, limits.max_string_bytes)?;
            }
        }
        total = total.add(walker.selection_set(&operation.node.selection_set.node)?);
        walker.within(total)?;
    }
    // Unused fragments cost validation a walk too.
    for name in doc.fragments.keys() {
        walker.fragment(name)?;
    }
    Ok(total)
}

impl<'a> Walker<'a> {
    fn within(&self, shape: Shape) -> Result<(), ShapeError> {
        if shape.nodes > self.limits.max_nodes {
            return Err(ShapeError::TooLarge(self.limits.max_nodes));
        }
        if shape.aliases > self.limits.max_aliases {
            return Err(ShapeError::TooManyAliases(self.limits.max_aliases));
        }
        Ok(())
    }

    fn selection_set(&mut self, set: &'a SelectionSet) -> Result<Shape, ShapeError> {
        let mut shape = Shape::default();
        for item in &set.items {
            let part = match &item.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    for (_, value) in &field.arguments {
                        check_strings(&value.node, self.limits.max_string_bytes)?;
                    }
                    let own = Shape {
                        nodes: 1,
                        aliases: u64::from(field.alias.is_some()),
                    };
                    own.add(self.selection_set(&field.selection_set.node)?)
                }
                Selection::FragmentSpread(spread) => {
                    let inner = self.fragment(&spread.node.fragment_name.node)?;
                    Shape { nodes: 1, aliases: 0 }.add(inner)
                }
                Selection::InlineFragment(inline) => self.selection_set(&inline.node.selection_set.node)?,
            };
            shape = shape.add(part);
            self.within(shape)?;
        }
        Ok(shape)
    }

    fn fragment(&mut self, name: &'a Name) -> Result<Shape, ShapeError> {
        match self.fragments.get(name) {
            Some(Sizing::Done(shape)) => return Ok(*shape),
            Some(Sizing::InProgress) => return Err(ShapeError::FragmentCycle(name.to_string())),
            None => {}
        }
        // An unknown fragment is validation's to report; it expands to nothing here.
        let Some(definition) = self.doc.fragments.get(name) else {
            return Ok(Shape::default());
        };
        self.fragments.insert(name, Sizing::InProgress);
        let shape = self.selection_set(&definition.node.selection_set.node)?;
        self.fragments.insert(name, Sizing::Done(shape));
        Ok(shape)
    }
}

fn check_strings(value: &Value, max: usize) -> Result<(), ShapeError> {
    match value {
        Value::String(s) if s.len() > max => Err(ShapeError::ArgumentTooLong(max)),
        Value::List(items) => items.iter().try_for_each(|v| check_strings(v, max)),
        Value::Object(fields) => fields.values().try_for_each(|v| check_strings(v, max)),
        _ => Ok(()),
    }
}

/// The same bound on variable values and defaults.
pub fn check_const_strings(value: &ConstValue, max: usize) -> Result<(), ShapeError> {
    match value {
        ConstValue::String(s) if s.len() > max => Err(ShapeError::ArgumentTooLong(max)),
        ConstValue::Binary(b) if b.len() > max => Err(ShapeError::ArgumentTooLong(max)),
        ConstValue::List(items) => items.iter().try_for_each(|v| check_const_strings(v, max)),
        ConstValue::Object(fields) => fields.values().try_for_each(|v| check_const_strings(v, max)),
        _ => Ok(()),
    }
}

/// Whether any operation of `doc` (fragments expanded) selects `__schema` or `__type`.
pub fn introspects(doc: &ExecutableDocument) -> bool {
    fn set<'a>(doc: &'a ExecutableDocument, set_: &'a SelectionSet, seen: &mut Vec<&'a Name>) -> bool {
        set_.items.iter().any(|item| match &item.node {
            Selection::Field(field) => {
                let name = field.node.name.node.as_str();
                name == "__schema" || name == "__type" || set(doc, &field.node.selection_set.node, seen)
            }
            Selection::FragmentSpread(spread) => {
                let name = &spread.node.fragment_name.node;
                if seen.contains(&name) {
                    return false;
                }
                seen.push(name);
                doc.fragments
                    .get(name)
                    .is_some_and(|f| set(doc, &f.node.selection_set.node, seen))
            }
            Selection::InlineFragment(inline) => set(doc, &inline.node.selection_set.node, seen),
        })
    }
    let mut seen = Vec::new();
    doc.operations
        .iter()
        .any(|(_, op)| set(doc, &op.node.selection_set.node, &mut seen))
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::parser::parse_query;

    const LIMITS: ShapeLimits = ShapeLimits {
        max_nodes: 1000,
        max_aliases: 10,
        max_string_bytes: 16,
    };

    fn check(query: &str) -> Result<Shape, ShapeError> {
        check_document(&parse_query(query).unwrap(), LIMITS)
    }

    /// Fragment `F0` spreads `F1` twice, `F1` spreads `F2` twice, …: 2^levels leaves.
    fn fragment_bomb(levels: usize) -> String {
        let mut q = String::from("query { ...F0 }\n");
        for i in 0..levels {
            q.push_str(&format!(
                "fragment F{i} on Query {{ ...F{n} ...F{n} }}\n",
                n = i + 1
            ));
        }
        q.push_str(&format!("fragment F{levels} on Query {{ __typename }}\n"));
        q
    }

    #[test]
    fn a_fragment_bomb_is_sized_without_expanding_it() {
        assert_eq!(check(&fragment_bomb(26)), Err(ShapeError::TooLarge(1000)));
        // F8 is one field; each level above adds two spreads and doubles: 1, 4, 10, 22, …
        let expected = (0..8).fold(1u64, |below, _| 2 + 2 * below) + 1;
        assert_eq!(check(&fragment_bomb(8)).unwrap().nodes, expected);
    }

    #[test]
    fn aliases_count_through_fragments() {
        assert!(check("{ a: __typename b: __typename }").is_ok());
        let q = "{ ...F ...F } fragment F on Query { a: __typename b: __typename c: __typename d: __typename e: __typename f: __typename }";
        assert_eq!(check(q), Err(ShapeError::TooManyAliases(10)));
    }

    #[test]
    fn cycles_and_long_strings_are_refused() {
        assert_eq!(
            check("{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }"),
            Err(ShapeError::FragmentCycle("A".into()))
        );
        assert_eq!(
            check(r#"{ batchUploadTemplate(x: "01234567890123456") }"#),
            Err(ShapeError::ArgumentTooLong(16))
        );
        assert_eq!(
            check(r#"{ f(x: {y: ["01234567890123456"]}) }"#),
            Err(ShapeError::ArgumentTooLong(16))
        );
        assert!(check(r#"{ f(x: "0123456789012345") }"#).is_ok());
    }

    #[test]
    fn introspection_is_found_behind_fragments() {
        let parse = |q| parse_query(q).unwrap();
        assert!(introspects(&parse("{ __schema { queryType { name } } }")));
        assert!(introspects(&parse(
            "{ ...F } fragment F on Query { __type(name: \"X\") { name } }"
        )));
        assert!(!introspects(&parse("{ __typename upload { id } }")));
    }
}
