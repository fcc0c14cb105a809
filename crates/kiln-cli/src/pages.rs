//! Reading a whole paginated list (AIP-158): ask page after page, passing
//! each answer's `next_page_token` back, until it is empty.

use std::future::Future;

use crate::error::CliError;

/// Pages read at most: at 1000 items a page, far more than any job holds.
const MAX_PAGES: usize = 10_000;

/// Every item of a list, `fetch` answering one page (items, next token)
/// for a page token ("" for the first page).
pub async fn all<T, F, Fut>(what: &'static str, mut fetch: F) -> Result<Vec<T>, CliError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), CliError>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    for _ in 0..MAX_PAGES {
        let (page, next) = fetch(token.clone()).await?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        if next == token {
            return Err(CliError::Paging {
                what,
                reason: "the gateway answered the same page twice".into(),
            });
        }
        token = next;
    }
    Err(CliError::Paging {
        what,
        reason: format!("more than {MAX_PAGES} pages"),
    })
}
