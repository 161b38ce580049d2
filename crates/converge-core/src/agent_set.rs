//! A set of agents as a bitset: O(1) insert and lookup, word-at-a-time union, and iteration
//! in `AgentId` order — the order every batch and every merge follows.

use crate::id::AgentId;

/// A set of agent ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AgentSet {
    words: Vec<u64>,
}

impl AgentSet {
    pub(crate) fn insert(&mut self, agent: AgentId) {
        let (word, bit) = (agent.index() / 64, agent.index() % 64);
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << bit;
    }

    /// Adds every member of `other`.
    pub(crate) fn union_with(&mut self, other: &AgentSet) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (word, other) in self.words.iter_mut().zip(&other.words) {
            *word |= other;
        }
    }

    /// Removes every member of `other`.
    pub(crate) fn subtract(&mut self, other: &AgentSet) {
        for (word, other) in self.words.iter_mut().zip(&other.words) {
            *word &= !other;
        }
    }

    /// Whether the set has no member.
    pub(crate) fn is_empty(&self) -> bool {
        self.words.iter().all(|&word| word == 0)
    }

    /// Empties the set, returning what it held.
    pub(crate) fn take(&mut self) -> AgentSet {
        std::mem::take(self)
    }

    /// Members with an index of at least `start`, in id order.
    pub(crate) fn iter_from(&self, start: usize) -> impl Iterator<Item = AgentId> + '_ {
        let first = start / 64;
        self.words
            .iter()
            .enumerate()
            .skip(first)
            .flat_map(move |(index, &word)| {
                let word = if index == first {
                    word & (u64::MAX << (start % 64))
                } else {
                    word
                };
                Bits(word).map(move |bit| AgentId((index * 64 + bit) as u32))
            })
    }
}

/// The set bits of a word, lowest first.
struct Bits(u64);

impl Iterator for Bits {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let bit = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u32]) -> AgentSet {
        let mut set = AgentSet::default();
        for &id in ids {
            set.insert(AgentId(id));
        }
        set
    }

    fn members(set: &AgentSet, start: usize) -> Vec<u32> {
        set.iter_from(start).map(|agent| agent.0).collect()
    }

    #[test]
    fn iterates_in_order_from_any_start() {
        let set = set(&[130, 0, 63, 64, 5]);
        assert_eq!(members(&set, 0), vec![0, 5, 63, 64, 130]);
        assert_eq!(members(&set, 6), vec![63, 64, 130]);
        assert_eq!(members(&set, 64), vec![64, 130]);
        assert_eq!(members(&set, 131), Vec::<u32>::new());
        assert_eq!(members(&set, 1000), Vec::<u32>::new());
    }

    #[test]
    fn union_subtract_contains_and_take() {
        let mut a = set(&[1, 200]);
        a.union_with(&set(&[2, 300]));
        assert_eq!(members(&a, 0), vec![1, 2, 200, 300]);
        a.subtract(&set(&[2, 200]));
        assert_eq!(members(&a, 0), vec![1, 300]);
        let taken = a.take();
        assert_eq!(members(&taken, 0), vec![1, 300]);
        assert_eq!(members(&a, 0), Vec::<u32>::new());
    }
}
