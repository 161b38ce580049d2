//! Suggestions in messages: the declared name closest to a misspelled one ("did you mean
//! `amount`?"), and names listed the way messages list them. Nothing here knows what the
//! names are.

/// `a`, `b`, `c` — names as a message lists them.
pub(crate) fn quoted(names: &[&str]) -> String {
    if names.is_empty() {
        return "(none)".to_owned();
    }
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Appends "; did you mean `x`?" when a candidate is close to `name`.
pub(crate) fn push_suggestion<'c>(
    message: &mut String,
    name: &str,
    candidates: impl Iterator<Item = &'c str>,
) {
    if let Some(closest) = closest(name, candidates) {
        message.push_str(&format!("; did you mean `{closest}`?"));
    }
}

/// The candidate closest to `name` by edit distance, if close enough to be a misspelling.
fn closest<'c>(name: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    let allowed = (name.chars().count() / 3).clamp(1, 3);
    candidates
        .filter(|candidate| *candidate != name)
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_close_names_only() {
        assert_eq!(
            closest("amout", ["amount", "supplier"].into_iter()),
            Some("amount")
        );
        assert_eq!(closest("zzz", ["amount", "supplier"].into_iter()), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
