//! The limits file, in Limitador's own format: a YAML (or JSON) list of limits,
//! each `{namespace, max_value, seconds, conditions, variables, name?}`, where
//! `namespace` is the RLS `domain` and conditions and variables are CEL over
//! `descriptors`, the request's descriptors as a list of key -> value maps.
//!
//! ```yaml
//! - namespace: tollgate
//!   name: tenant-daily
//!   max_value: 100000
//!   seconds: 86400
//!   conditions: ["descriptors[0].policy == 'tenant-daily'"]
//!   variables: ["descriptors[0].tenant"]
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context as _};
use limitador::limit::{Expression, Limit, Predicate};
use serde::Deserialize;

/// One entry of the file. Limitador's own `Limit` deserialises too, but silently
/// takes a missing `max_value` as 0 (a limit that refuses everything): here every
/// field but `name` is required, so a typo fails loudly.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitEntry {
    namespace: String,
    max_value: u64,
    seconds: u64,
    #[serde(default)]
    name: Option<String>,
    conditions: Vec<String>,
    variables: Vec<String>,
}

/// Reads and checks the limits file; errors name the file and the failing entry.
pub fn load(path: &Path) -> anyhow::Result<Vec<Limit>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the limits file {}", path.display()))?;
    parse(&text).with_context(|| format!("limits file {}", path.display()))
}

pub fn parse(text: &str) -> anyhow::Result<Vec<Limit>> {
    let document = serde_yaml_ng::Deserializer::from_str(text);
    let entries: Vec<LimitEntry> = serde_path_to_error::deserialize(document)
        .map_err(|err| anyhow::anyhow!("at `{}`: {}", err.path(), err.inner()))?;
    let mut seen = BTreeSet::new();
    entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            let limit = to_limit(entry).with_context(|| format!("limit #{index}"))?;
            // Limitador identifies a limit by namespace, window, conditions and
            // variables: two entries equal on those would silently merge.
            if !seen.insert(limit.clone()) {
                bail!("limit #{index} repeats the namespace, seconds, conditions and variables of an earlier limit");
            }
            Ok(limit)
        })
        .collect()
}

fn to_limit(entry: LimitEntry) -> anyhow::Result<Limit> {
    if entry.namespace.is_empty() {
        bail!("`namespace` (the RLS domain) is empty");
    }
    if entry.seconds == 0 {
        bail!("`seconds` must be at least 1");
    }
    let conditions = entry
        .conditions
        .iter()
        .map(|source| {
            Predicate::parse(source).map_err(|err| anyhow::anyhow!("condition `{source}`: {err}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let variables = entry
        .variables
        .iter()
        .map(|source| {
            Expression::parse(source).map_err(|err| anyhow::anyhow!("variable `{source}`: {err}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut limit = Limit::new(
        entry.namespace,
        entry.max_value,
        entry.seconds,
        conditions,
        variables,
    );
    if let Some(name) = entry.name {
        limit.set_name(name);
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_limitador_limits() {
        let limits = parse(
            "- namespace: tollgate\n  name: per-tenant\n  max_value: 5\n  seconds: 60\n  \
             conditions: [\"descriptors[0].policy == 'per-tenant'\"]\n  \
             variables: [\"descriptors[0].tenant\"]\n",
        )
        .unwrap();
        assert_eq!(limits.len(), 1);
        assert_eq!(limits[0].max_value(), 5);
        assert_eq!(limits[0].seconds(), 60);
        assert_eq!(limits[0].name(), Some("per-tenant"));
        assert_eq!(limits[0].namespace().as_ref(), "tollgate");
    }

    #[test]
    fn json_is_accepted() {
        let limits = parse(
            r#"[{"namespace": "tollgate", "max_value": 1, "seconds": 1, "conditions": [], "variables": []}]"#,
        )
        .unwrap();
        assert_eq!(limits.len(), 1);
    }

    #[test]
    fn errors_say_where() {
        let err = parse("- namespace: t\n  seconds: 60\n  conditions: []\n  variables: []\n")
            .unwrap_err();
        assert!(format!("{err:#}").contains("max_value"), "{err:#}");

        let err = parse(
            "- namespace: t\n  max_value: 1\n  seconds: 60\n  conditions: [\"descriptors[0].policy ==\"]\n  variables: []\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("limit #0"), "{err:#}");
        assert!(format!("{err:#}").contains("condition"), "{err:#}");

        let err = parse(
            "- namespace: t\n  max_value: 1\n  seconds: 60\n  conditions: []\n  variables: []\n  limit: 3\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("limit"), "{err:#}");

        let twice = "- {namespace: t, max_value: 1, seconds: 60, conditions: [], variables: []}\n";
        let err = parse(&format!("{twice}{twice}")).unwrap_err();
        assert!(format!("{err:#}").contains("repeats"), "{err:#}");
    }
}
