//! The last lines of a renderer's output, kept for the task result.

use std::collections::VecDeque;

/// Longest line kept, in characters; longer lines are cut.
pub const MAX_LINE_CHARS: usize = 1000;

/// A ring buffer of the last `capacity` lines.
#[derive(Debug)]
pub struct LogTail {
    lines: VecDeque<String>,
    capacity: usize,
}

impl LogTail {
    pub fn new(capacity: usize) -> Self {
        Self {
            lines: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
        }
    }

    pub fn push(&mut self, line: &str) {
        if self.capacity == 0 {
            return;
        }
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        self.lines
            .push_back(truncate_chars(line, MAX_LINE_CHARS).to_owned());
    }

    /// The most recent line, if any.
    pub fn last(&self) -> Option<&str> {
        self.lines.back().map(String::as_str)
    }

    /// The kept lines joined by newlines.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `text` cut to at most `max` characters, on a character boundary.
pub fn truncate_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_last_lines() {
        let mut tail = LogTail::new(2);
        for line in ["a", "b", "c"] {
            tail.push(line);
        }
        assert_eq!(tail.text(), "b\nc");
        assert_eq!(tail.last(), Some("c"));
    }

    #[test]
    fn cuts_long_lines_on_char_boundaries() {
        let mut tail = LogTail::new(1);
        tail.push(&"é".repeat(MAX_LINE_CHARS + 10));
        assert_eq!(tail.text().chars().count(), MAX_LINE_CHARS);
    }
}
