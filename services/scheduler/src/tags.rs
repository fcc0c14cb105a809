//! Tags (pools): names a job asks for and an admin gives workers. A job's
//! tasks go only to workers carrying every tag it names.

use std::collections::BTreeSet;

/// Most tags on one job or worker.
pub const MAX_TAGS: usize = 16;
const MAX_LENGTH: usize = 64;

/// The tags, checked and deduplicated, or what is wrong with them (naming
/// `field`).
pub fn check(field: &str, tags: &[String]) -> Result<BTreeSet<String>, String> {
    if tags.len() > MAX_TAGS {
        return Err(format!(
            "{field}: {} tags; at most {MAX_TAGS} are allowed",
            tags.len()
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    for tag in tags {
        if tag.is_empty() || tag.len() > MAX_LENGTH || !tag.chars().all(allowed) {
            return Err(format!(
                "{field}: {tag:?} must be 1 to {MAX_LENGTH} letters, digits, '.', '_' or '-'"
            ));
        }
    }
    Ok(tags.iter().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_plain_names_few_and_deduplicated() {
        let tags = check("tags", &["fx".into(), "gpu-a100".into(), "fx".into()]);
        assert_eq!(tags, Ok(["fx".to_owned(), "gpu-a100".to_owned()].into()));
        for bad in ["", "a,b", "a b", "ünï", &"x".repeat(65)] {
            assert!(check("tags", &[bad.to_owned()]).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
        assert!(check("tags", &many).is_err());
    }
}
