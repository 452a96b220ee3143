//! Lists of names in messages a person reads: a few named, the rest counted.

use std::fmt::Display;

/// `a, b, c and 4 more`: the first `shown` items by name, the rest counted.
pub fn names_and_more<T: Display>(items: &[T], shown: usize) -> String {
    let named: Vec<String> = items.iter().take(shown).map(ToString::to_string).collect();
    match items.len().saturating_sub(shown) {
        0 => named.join(", "),
        more => format!("{} and {more} more", named.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_are_named_and_the_rest_counted() {
        assert_eq!(names_and_more(&["a", "b", "c"], 5), "a, b, c");
        assert_eq!(names_and_more(&["a", "b", "c"], 3), "a, b, c");
        assert_eq!(names_and_more(&["a", "b", "c", "d"], 2), "a, b and 2 more");
        assert_eq!(names_and_more::<&str>(&[], 2), "");
    }
}
