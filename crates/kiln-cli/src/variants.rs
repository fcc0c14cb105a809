//! `kiln render --variants`: a variant table (CSV or JSON) turned into one
//! personalised-video job. Image cells are local files, uploaded as assets;
//! the table goes to the workers as JSON, whose trusted driver applies it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use kiln_asset_client::AssetClient;
use kiln_jobmodel::{MAX_ROWS, VariantRow, VariantTable};
use kiln_proto::v1::JobInput;

use crate::error::CliError;

/// Where the table goes in each task's working directory.
pub const TABLE_INPUT: &str = "variants.json";
/// Column naming each row.
const ID_COLUMN: &str = "id";
const IMAGE_PREFIX: &str = "image:";
const TEXT_PREFIX: &str = "text:";
/// Largest variant table read.
const MAX_TABLE_BYTES: u64 = 16 * 1024 * 1024;

/// A row as read from the table, images still local paths.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRow {
    pub id: String,
    pub texts: BTreeMap<String, String>,
    pub images: BTreeMap<String, PathBuf>,
}

/// Reads `path` (.json: an array of objects; anything else: CSV with a
/// header row) into rows; image paths are resolved against the table's directory.
pub fn read_table(path: &Path) -> Result<Vec<LocalRow>, CliError> {
    let size = std::fs::metadata(path).map_err(CliError::io(path))?.len();
    if size > MAX_TABLE_BYTES {
        return Err(table_error(
            path,
            format!("larger than {MAX_TABLE_BYTES} bytes"),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(CliError::io(path))?;
    let records = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => json_records(&text).map_err(|reason| table_error(path, reason))?,
        _ => csv_records(&text).map_err(|reason| table_error(path, reason))?,
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let rows = records
        .into_iter()
        .enumerate()
        .map(|(i, record)| {
            row(record, base)
                .map_err(|reason| table_error(path, format!("row {}: {reason}", i + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if rows.is_empty() || rows.len() > MAX_ROWS {
        return Err(table_error(
            path,
            format!("needs 1 to {MAX_ROWS} rows, has {}", rows.len()),
        ));
    }
    Ok(rows)
}

fn table_error(path: &Path, reason: String) -> CliError {
    CliError::Variants {
        path: path.to_owned(),
        reason,
    }
}

fn csv_records(text: &str) -> Result<Vec<Vec<(String, String)>>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| e.to_string())?.clone();
    reader
        .records()
        .map(|record| {
            let record = record.map_err(|e| e.to_string())?;
            Ok(headers
                .iter()
                .zip(record.iter())
                .map(|(h, v)| (h.to_owned(), v.to_owned()))
                .collect())
        })
        .collect()
}

fn json_records(text: &str) -> Result<Vec<Vec<(String, String)>>, String> {
    let rows: Vec<BTreeMap<String, serde_json::Value>> =
        serde_json::from_str(text).map_err(|e| format!("expected an array of objects: {e}"))?;
    rows.into_iter()
        .map(|row| {
            row.into_iter()
                .map(|(key, value)| match value {
                    serde_json::Value::String(text) => Ok((key, text)),
                    serde_json::Value::Number(n) => Ok((key, n.to_string())),
                    other => Err(format!("{key:?} must be text, got {other}")),
                })
                .collect()
        })
        .collect()
}

fn row(record: Vec<(String, String)>, base: &Path) -> Result<LocalRow, String> {
    let mut id = None;
    let mut texts = BTreeMap::new();
    let mut images = BTreeMap::new();
    for (column, value) in record {
        if column == ID_COLUMN {
            kiln_jobmodel::validate_row_id(&value).map_err(|e| e.to_string())?;
            id = Some(value);
        } else if let Some(name) = column.strip_prefix(IMAGE_PREFIX) {
            images.insert(name.trim().to_owned(), base.join(value));
        } else {
            let name = column.strip_prefix(TEXT_PREFIX).unwrap_or(&column);
            texts.insert(name.trim().to_owned(), value);
        }
    }
    let id = id.ok_or("no \"id\" column")?;
    if texts
        .keys()
        .chain(images.keys())
        .any(|name| name.is_empty())
    {
        return Err("a column names no placeholder".to_owned());
    }
    Ok(LocalRow { id, texts, images })
}

/// Uploads every image (once per content) and the table; returns the job's
/// inputs for them.
pub async fn upload(assets: &AssetClient, rows: &[LocalRow]) -> Result<Vec<JobInput>, CliError> {
    let mut inputs = HashMap::new();
    let mut table = VariantTable {
        rows: Vec::with_capacity(rows.len()),
    };
    for local in rows {
        let mut images = BTreeMap::new();
        for (name, file) in &local.images {
            if !file.is_file() {
                return Err(CliError::NoImage {
                    row: local.id.clone(),
                    path: file.clone(),
                });
            }
            let stored = assets.upload_file(file).await?;
            // Named by digest: safe as a path, and shared by rows using the same file.
            let extension = file
                .extension()
                .and_then(|e| e.to_str())
                .filter(|e| e.chars().all(|c| c.is_ascii_alphanumeric()))
                .unwrap_or("img");
            let path = format!("variant-assets/{}.{extension}", stored.digest);
            inputs.insert(path.clone(), stored.digest);
            images.insert(name.clone(), path);
        }
        table.rows.push(VariantRow {
            id: local.id.clone(),
            texts: local.texts.clone(),
            images,
        });
    }
    let json = serde_json::to_vec(&table).map_err(|e| CliError::Variants {
        path: PathBuf::from(TABLE_INPUT),
        reason: e.to_string(),
    })?;
    let source = futures::stream::once(async move { Ok(bytes::Bytes::from(json)) });
    let stored = assets.upload_stream(None, source).await?;
    inputs.insert(TABLE_INPUT.to_owned(), stored.digest);
    Ok(inputs
        .into_iter()
        .map(|(path, digest)| JobInput { path, digest })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_csv_with_text_and_image_columns() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("rows.csv");
        std::fs::write(
            &path,
            "id,Title,text:Subtitle,image:Photo\nalice,\"Hello, Alice\",x,alice.png\nbob,Hi Bob,y,bob.png\n",
        )
        .expect("written");
        let rows = read_table(&path).expect("read");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "alice");
        assert_eq!(rows[0].texts["Title"], "Hello, Alice");
        assert_eq!(rows[0].texts["Subtitle"], "x");
        assert_eq!(rows[1].images["Photo"], dir.path().join("bob.png"));
    }

    #[test]
    fn reads_json_and_refuses_unsafe_ids() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = dir.path().join("rows.json");
        std::fs::write(
            &good,
            r#"[{"id": "a1", "Title": "One"}, {"id": "b2", "Title": 2}]"#,
        )
        .expect("written");
        let rows = read_table(&good).expect("read");
        assert_eq!(rows[1].texts["Title"], "2");
        let bad = dir.path().join("bad.csv");
        std::fs::write(&bad, "id,Title\n../../etc,x\n").expect("written");
        let error = read_table(&bad).map(|_| ()).unwrap_err().to_string();
        assert!(error.contains("../../etc"), "{error}");
        let no_id = dir.path().join("noid.csv");
        std::fs::write(&no_id, "name,Title\nx,y\n").expect("written");
        assert!(read_table(&no_id).is_err());
    }
}
