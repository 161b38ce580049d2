//! Static checks of templates (`propose`, `prompt`, `system`): every variable a template uses
//! must be bound when it renders.
//!
//! MiniJinja lists the names a template reads without defining them (with the attributes read
//! from each: `fact.content.amount`). A name that is not `facts` (nor `fact`, with
//! `for_each`) is refused, naming the variables the template has; a dotted name is checked
//! like the CEL expression it spells (`facts.payout`, `fact.content.amout`), so keys and
//! schema fields are held to the same rules as in conditions. Nothing is rendered.

use serde_saphyr::Spanned;

use super::cel::{self, Scope};
use super::{Checker, Seen, at, word_at};
use crate::spec::expr::Expression;
use crate::spec::template::{ContentTemplate, Templates};

impl Checker<'_> {
    /// Checks the names `compiled` (written as `text`, at `value`) uses.
    pub(super) fn template_names<T>(
        &mut self,
        text: &str,
        value: &Spanned<T>,
        compiled: &ContentTemplate,
        templates: &Templates,
        seen: Seen,
    ) {
        if !self.static_checks {
            return;
        }
        let known = self.known.clone();
        let scope = Scope {
            known: &known,
            visible: seen.visible,
            fact_key: seen.fact_key,
            agent: seen.agent,
        };
        let mut reported = Vec::new();
        for (path, name) in templates.undeclared(compiled) {
            // A name whose attributes are not CEL identifiers is not checked further.
            let Ok((ast, info)) = Expression::parse(&self.cel, &name) else {
                continue;
            };
            let offsets = |id| info.offset_for(id).map(|(start, _)| start as usize);
            for finding in cel::check(&ast, &offsets, &scope, false) {
                let words = word_at(&name, finding.offset);
                if reported.contains(&words) {
                    continue;
                }
                let place = self.source.place(at(value), text, None, &words);
                let message = format!(
                    "`{path}` of {}: {}",
                    seen.owner,
                    finding
                        .message
                        .replace("variables here", "variables in this template")
                );
                self.error(place, message);
                reported.push(words);
            }
        }
    }
}
