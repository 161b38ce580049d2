//! The context: the shared, typed, append-only state of a run.
//!
//! Facts are stored once, in promotion order (the history). Each key keeps a current view: one
//! slot per fact id in order of first promotion, pointing at the latest version. Lookups by key
//! and id are O(1); a correction replaces a slot without touching the history. Hash maps are
//! used for lookup only; every iteration follows the history or key order, so no hash order
//! reaches an output. There is no public way to add a fact: only the engine's gate does.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::digest::Digest;
use crate::fact::Fact;
use crate::id::FactId;
use crate::key::{ContextKey, CustomKey, WELL_KNOWN_COUNT};

/// The shared state agents read.
///
/// ```
/// use converge_core::{Context, ContextKey};
///
/// let ctx = Context::new();
/// assert!(!ctx.has(ContextKey::Seeds));
/// assert_eq!(ctx.count(ContextKey::Seeds), 0);
/// assert!(ctx.fact(ContextKey::Seeds, "s1").is_none());
/// ```
#[derive(Debug, Default, PartialEq)]
pub struct Context {
    history: Vec<Fact>,
    /// For each history entry, the history index of the version it superseded.
    previous: Vec<Option<usize>>,
    /// Well-known keys at `0..WELL_KNOWN_COUNT`, custom keys after, in creation order.
    slots: Vec<KeyFacts>,
    custom_slots: BTreeMap<CustomKey, usize>,
}

#[derive(Debug, Default, PartialEq)]
struct KeyFacts {
    /// History index of the current version of each fact, in order of first promotion.
    current: Vec<usize>,
    /// Position in `current` of each fact id.
    by_id: FxHashMap<FactId, usize>,
}

/// What [`Context::undo`] needs to take back the last insertion.
#[derive(Debug)]
pub(crate) struct Undo {
    slot: usize,
    position: usize,
    replaced: Option<usize>,
}

impl Context {
    /// An empty context.
    pub fn new() -> Context {
        Context::default()
    }

    /// Whether `key` holds at least one fact.
    #[inline]
    pub fn has(&self, key: ContextKey) -> bool {
        self.count(key) > 0
    }

    /// How many current facts `key` holds. O(1).
    #[inline]
    pub fn count(&self, key: ContextKey) -> usize {
        self.slot(key).map_or(0, |facts| facts.current.len())
    }

    /// The current facts of `key`, in order of first promotion.
    pub fn get(&self, key: ContextKey) -> impl ExactSizeIterator<Item = &Fact> + '_ {
        let current = self.slot(key).map_or(&[][..], |facts| &facts.current[..]);
        current.iter().map(|&index| &self.history[index])
    }

    /// The current version of fact `id` in `key`. O(1).
    #[inline]
    pub fn fact(&self, key: ContextKey, id: &str) -> Option<&Fact> {
        let facts = self.slot(key)?;
        let position = *facts.by_id.get(id)?;
        Some(&self.history[facts.current[position]])
    }

    /// Whether fact `id` exists in `key`. O(1).
    #[inline]
    pub fn contains(&self, key: ContextKey, id: &str) -> bool {
        self.slot(key)
            .is_some_and(|facts| facts.by_id.contains_key(id))
    }

    /// Every version of fact `id` in `key`, newest first.
    pub fn versions(&self, key: ContextKey, id: &str) -> impl Iterator<Item = &Fact> + '_ {
        let newest = self.slot(key).and_then(|facts| {
            let position = *facts.by_id.get(id)?;
            Some(facts.current[position])
        });
        std::iter::successors(newest, |&index| self.previous[index])
            .map(|index| &self.history[index])
    }

    /// Every fact ever promoted, superseded versions included, in promotion order.
    pub fn history(&self) -> &[Fact] {
        &self.history
    }

    /// The number of current facts over all keys.
    pub fn len(&self) -> usize {
        self.slots.iter().map(|facts| facts.current.len()).sum()
    }

    /// Whether no fact was ever promoted.
    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
    }

    /// The keys holding at least one fact, in key order.
    pub fn keys(&self) -> impl Iterator<Item = ContextKey> + '_ {
        let well_known = ContextKey::well_known();
        let custom = self
            .custom_slots
            .keys()
            .map(|custom| ContextKey::Custom(*custom));
        well_known.chain(custom).filter(|key| self.has(*key))
    }

    /// A SHA-256 over the whole history: every version's key, id, version, content hash,
    /// confidence and promotion record. Two contexts with the same digest hold the same facts
    /// with the same provenance.
    pub fn digest(&self) -> Digest {
        let mut parts: Vec<Vec<u8>> = Vec::with_capacity(self.history.len() * 2);
        for fact in &self.history {
            let mut head = Vec::with_capacity(96);
            head.extend_from_slice(fact.key().name().as_bytes());
            head.push(0);
            head.extend_from_slice(fact.id().as_str().as_bytes());
            head.push(0);
            head.extend_from_slice(&fact.version().to_le_bytes());
            head.extend_from_slice(fact.content_hash().as_bytes());
            head.extend_from_slice(&fact.confidence().value().to_bits().to_le_bytes());
            parts.push(head);
            parts.push(serde_json::to_vec(fact.record()).unwrap_or_default());
        }
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        Digest::of_parts(&parts)
    }

    #[inline]
    fn slot(&self, key: ContextKey) -> Option<&KeyFacts> {
        let index = match key {
            ContextKey::Custom(custom) => *self.custom_slots.get(&custom)?,
            well_known => well_known.dense_index()?,
        };
        self.slots.get(index)
    }

    fn slot_index_or_insert(&mut self, key: ContextKey) -> usize {
        if self.slots.len() < WELL_KNOWN_COUNT {
            self.slots.resize_with(WELL_KNOWN_COUNT, KeyFacts::default);
        }
        match key {
            ContextKey::Custom(custom) => *self.custom_slots.entry(custom).or_insert_with(|| {
                self.slots.push(KeyFacts::default());
                self.slots.len() - 1
            }),
            well_known => well_known.dense_index().unwrap_or_default(),
        }
    }

    /// Makes room for `additional` more facts, so that inserting them grows nothing.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.history.reserve(additional);
        self.previous.reserve(additional);
    }

    /// Appends a fact: a new slot for a new id, or a new current version for a known one.
    pub(crate) fn insert(&mut self, fact: Fact) -> Undo {
        let index = self.history.len();
        let slot = self.slot_index_or_insert(fact.key());
        let facts = &mut self.slots[slot];
        let (position, replaced) = match facts.by_id.get(fact.id().as_str()) {
            Some(&position) => (
                position,
                Some(std::mem::replace(&mut facts.current[position], index)),
            ),
            None => {
                facts.by_id.insert(fact.id().clone(), facts.current.len());
                facts.current.push(index);
                (facts.current.len() - 1, None)
            }
        };
        self.previous.push(replaced);
        self.history.push(fact);
        Undo {
            slot,
            position,
            replaced,
        }
    }

    /// Takes back the insertion that returned `undo`; it must be the latest one.
    pub(crate) fn undo(&mut self, undo: Undo) -> Option<Fact> {
        let fact = self.history.pop()?;
        self.previous.pop();
        let facts = &mut self.slots[undo.slot];
        match undo.replaced {
            Some(previous) => facts.current[undo.position] = previous,
            None => {
                facts.current.pop();
                facts.by_id.remove(fact.id().as_str());
            }
        }
        Some(fact)
    }
}

/// Serializes the current view: key name to its current facts in order.
impl Serialize for Context {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let keys: Vec<ContextKey> = self.keys().collect();
        let mut map = serializer.serialize_map(Some(keys.len()))?;
        for key in keys {
            let facts: Vec<&Fact> = self.get(key).collect();
            map.serialize_entry(key.name(), &facts)?;
        }
        map.end()
    }
}
