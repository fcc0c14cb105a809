//! Personalised videos: one template .blend, one video per row of a variant
//! table. The table travels to workers as JSON ([`VariantTable`]); the
//! worker's trusted driver applies a row's values, so no user Python runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::JobModelError;

/// Longest row id; ids become directory names.
pub const MAX_ROW_ID_CHARS: usize = 64;
/// Most rows one job may have.
pub const MAX_ROWS: usize = 10_000;
/// Where the row ids go in the template.
const IDS_PLACEHOLDER: &str = "__KILN_VARIANT_IDS__";

/// The variant table as the driver reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantTable {
    pub rows: Vec<VariantRow>,
}

/// One personalised video.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantRow {
    /// Names the row's outputs: `variants/<id>/video.mp4`.
    pub id: String,
    /// Text object name -> its new body.
    #[serde(default)]
    pub texts: BTreeMap<String, String>,
    /// Image datablock name -> path of the new file in the task's working directory.
    #[serde(default)]
    pub images: BTreeMap<String, String>,
}

/// Checks that `id` can name a directory and nothing else: letters, digits,
/// `_`, `-` and `.`, starting with a letter or digit, never `..`.
pub fn validate_row_id(id: &str) -> Result<(), JobModelError> {
    let bad = |why: &str| Err(JobModelError::RowId(id.to_owned(), why.to_owned()));
    if id.is_empty() || id.chars().count() > MAX_ROW_ID_CHARS {
        return bad("must be 1 to 64 characters");
    }
    if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return bad("must start with a letter or digit");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return bad("may hold only letters, digits, '_', '-' and '.'");
    }
    if id.contains("..") {
        return bad("must not contain '..'");
    }
    Ok(())
}

/// The personalised-video template with one render and encode per row id.
pub fn variants_template(row_ids: &[String]) -> Result<String, JobModelError> {
    if row_ids.is_empty() || row_ids.len() > MAX_ROWS {
        return Err(JobModelError::Template(format!(
            "a variant table needs 1 to {MAX_ROWS} rows, got {}",
            row_ids.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for id in row_ids {
        validate_row_id(id)?;
        if !seen.insert(id) {
            return Err(JobModelError::RowId(id.clone(), "appears twice".to_owned()));
        }
    }
    // Validated ids need no escaping; JSON's string array is YAML's flow sequence.
    let list = serde_json::to_string(row_ids)
        .map_err(|error| JobModelError::Template(error.to_string()))?;
    Ok(include_str!("../templates/blender-variants.yaml").replace(IDS_PLACEHOLDER, &list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ids_cannot_escape_their_directory() {
        for good in ["alice", "row-1", "Bob_2.v1", "7"] {
            assert!(validate_row_id(good).is_ok(), "{good}");
        }
        for bad in [
            "", "..", "../x", "a/b", ".hidden", "a..b", "a b", "{{x}}", "é", "a\\b",
        ] {
            assert!(validate_row_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_row_id(&"a".repeat(65)).is_err());
    }

    #[test]
    fn template_lists_the_rows_and_refuses_duplicates() {
        let ids = vec!["alice".to_owned(), "bob".to_owned()];
        let template = variants_template(&ids).unwrap_or_default();
        assert!(template.contains(r#"range: ["alice","bob"]"#));
        let twice = vec!["alice".to_owned(), "alice".to_owned()];
        assert!(variants_template(&twice).is_err());
        assert!(variants_template(&[]).is_err());
    }
}
