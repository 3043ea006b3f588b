//! The text tokenizer shared by word counts and TF-IDF: scikit-learn's default analyzer as
//! dataiku-scoring writes it (lower-case, tokens matching `(?u)\b\w\w+\b`, stop words removed,
//! n-grams joined by one space).
//!
//! A word character is `_` or an alphanumeric character. Python's `\w` uses `str.isalnum`
//! (letters of categories L*, and numbers); Rust's `char::is_alphanumeric` also counts the
//! combining marks of the Unicode property Other_Alphabetic (some Indic vowel signs, for
//! example) as letters. Text in those scripts can tokenize differently (docs/scoring.md).

use std::collections::HashMap;
use std::collections::HashSet;

#[derive(Debug, Clone)]
pub(crate) struct Tokenizer {
    stop_words: HashSet<String>,
    min_n: usize,
    max_n: usize,
}

fn is_word(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

impl Tokenizer {
    pub(crate) fn new(stop_words: &[String], min_n: usize, max_n: usize) -> Self {
        Tokenizer {
            stop_words: stop_words.iter().map(|s| s.to_lowercase()).collect(),
            min_n,
            max_n,
        }
    }

    /// The n-grams of `doc`, unigrams first, in document order.
    pub(crate) fn ngrams(&self, doc: &str) -> Vec<String> {
        let lower = doc.to_lowercase();
        let mut tokens: Vec<&str> = Vec::new();
        let mut start: Option<usize> = None;
        let mut count = 0usize;
        for (i, c) in lower.char_indices() {
            if is_word(c) {
                if start.is_none() {
                    start = Some(i);
                    count = 0;
                }
                count += 1;
            } else if let Some(s) = start.take()
                && count >= 2
            {
                tokens.push(&lower[s..i]);
            }
        }
        if let Some(s) = start
            && count >= 2
        {
            tokens.push(&lower[s..]);
        }
        tokens.retain(|t| !self.stop_words.contains(*t));
        let mut out = Vec::new();
        for n in self.min_n..=self.max_n {
            if n == 0 || n > tokens.len() {
                continue;
            }
            for w in tokens.windows(n) {
                out.push(w.join(" "));
            }
        }
        out
    }

    /// `Counter(ngrams)`: each distinct n-gram with its count, in order of first occurrence.
    pub(crate) fn counts(&self, doc: &str) -> Vec<(String, f64)> {
        let mut order: Vec<(String, f64)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for g in self.ngrams(doc) {
            match index.get(&g) {
                Some(&k) => order[k].1 += 1.0,
                None => {
                    index.insert(g.clone(), order.len());
                    order.push((g, 1.0));
                }
            }
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_sklearn_default_analyzer() {
        let t = Tokenizer::new(&["Good".to_owned()], 1, 2);
        assert_eq!(
            t.ngrams("Apple, GOOD a banana_split!x"),
            vec!["apple", "banana_split", "apple banana_split"]
        );
        let c = t.counts("late late fast");
        assert_eq!(
            c,
            vec![
                ("late".to_owned(), 2.0),
                ("fast".to_owned(), 1.0),
                ("late late".to_owned(), 1.0),
                ("late fast".to_owned(), 1.0)
            ]
        );
        assert!(t.ngrams("").is_empty());
    }
}
