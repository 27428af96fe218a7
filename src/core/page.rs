//! Paging of list calls: `page_size` (default 100, at most 1000) and an opaque token.

use super::model::Micros;
use crate::error::{Error, Result};

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

/// A requested page: how many items and where to continue.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub size: u32,
    pub token: String,
}

impl PageRequest {
    /// Sizes above the maximum are lowered to it, as callers cannot know the server's maximum.
    pub fn size(&self) -> usize {
        match self.size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        }
    }

    /// The key to continue after, from a token made by `token_for`.
    pub fn after(&self) -> Result<Option<String>> {
        if self.token.is_empty() {
            return Ok(None);
        }
        decode_hex(&self.token)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .map(Some)
            .ok_or_else(|| Error::invalid("page_token", "not a token returned by this call"))
    }

    /// The (time, id) position to continue after, from a token made by `time_token_for`, for
    /// lists ordered by time then id (a user's events).
    pub fn after_time(&self) -> Result<Option<(Micros, String)>> {
        let Some(position) = self.after()? else {
            return Ok(None);
        };
        position
            .split_once('/')
            .and_then(|(time, id)| Some((time.parse().ok()?, id.to_owned())))
            .map(Some)
            .ok_or_else(|| Error::invalid("page_token", "not a token returned by this call"))
    }
}

/// A token continuing after the item with this key, in a list ordered by key. Positions, not
/// offsets: items added between two pages never make a page repeat or skip an item that
/// existed when paging started.
pub fn token_for(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A token continuing after the item at (time, id), in a list ordered by time then id.
pub fn time_token_for(time: Micros, id: &str) -> String {
    token_for(&format!("{time}/{id}"))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// One page of `items` (sorted by `key`) after the request's token, and the next token.
pub fn paginate<T>(items: Vec<T>, key: impl Fn(&T) -> String, page: &PageRequest) -> Result<(Vec<T>, String)> {
    let after = page.after()?;
    let size = page.size();
    let mut out: Vec<T> =
        items.into_iter().filter(|item| after.as_ref().is_none_or(|a| key(item) > *a)).take(size + 1).collect();
    let next = if out.len() > size {
        out.truncate(size);
        out.last().map(|item| token_for(&key(item))).unwrap_or_default()
    } else {
        String::new()
    };
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pages_cover_everything_once() {
        let items: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
        let mut page = PageRequest { size: 10, token: String::new() };
        let mut seen = Vec::new();
        loop {
            let (got, next) = paginate(items.clone(), |s| s.clone(), &page).unwrap();
            seen.extend(got);
            if next.is_empty() {
                break;
            }
            page.token = next;
        }
        assert_eq!(seen, items);
    }

    #[test]
    fn bad_tokens_are_invalid_argument() {
        for token in ["zz", "abc", "ff"] {
            let page = PageRequest { size: 1, token: token.into() };
            assert!(
                matches!(page.after(), Err(Error::InvalidArgument { field, .. }) if field == "page_token"),
                "{token}"
            );
        }
    }

    #[test]
    fn time_positions_round_trip_and_bad_ones_are_invalid() {
        for (time, id) in [(-5, "a/b"), (0, ""), (1_767_225_600_000_000, "e01")] {
            let page = PageRequest { size: 1, token: time_token_for(time, id) };
            assert_eq!(page.after_time().unwrap(), Some((time, id.to_string())));
        }
        assert_eq!(PageRequest::default().after_time().unwrap(), None);
        for token in [token_for("m1"), token_for("x/e01"), "zz".into()] {
            let page = PageRequest { size: 1, token };
            assert!(matches!(page.after_time(), Err(Error::InvalidArgument { field, .. }) if field == "page_token"));
        }
    }

    proptest! {
        #[test]
        fn tokens_round_trip(key in ".{0,40}") {
            let page = PageRequest { size: 0, token: token_for(&key) };
            prop_assert_eq!(page.after().unwrap(), if key.is_empty() { None } else { Some(key.clone()) });
        }
    }
}
