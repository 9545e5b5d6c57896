//! Evaluation: which rule decides a request, and why the others lost.
//!
//! Only the rules indexed under the request's rp ID are looked at: the exact
//! map, the wildcard map once per parent domain of the rp ID, and the `*`
//! rules. [`Policy::evaluate`] allocates nothing unless the rp ID needs
//! normalizing (uppercase, a trailing dot, Unicode); [`Policy::explain`]
//! collects every match for people to read.

use std::borrow::Cow;

use crate::rp::{is_host_name, wildcard_rank, EXACT_RANK};
use crate::{Action, Operation, Policy, Principal, RpPattern, Rule, Settings};

/// The rule ID of the refusal of a U2F request that only wildcard rules
/// could have decided.
pub const U2F_UNATTRIBUTABLE: &str =
    "built-in: a U2F request names its rp only by a hash, which wildcard rules cannot match";

static NO_SETTINGS: Settings = Settings::BUILT_IN;

/// What a request is matched on.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// As the client sent it; normalized here.
    pub rp_id: &'a str,
    pub operation: Operation,
    /// The user the device belongs to, with their groups.
    pub principal: &'a Principal,
    /// A CTAP1/U2F request: `rp_id` is the application parameter (SHA-256
    /// of the app ID) in hex, matched against the hashes of exact rp IDs.
    /// Only such requests are matched by hash.
    pub ctap1: bool,
}

/// How specific a match is; compared field by field, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Specificity {
    /// The rp pattern: exact (65535) > `*.a.b.c` (3) > `*.b.c` (2) > `*` (0).
    pub rp: u16,
    /// Matched by user name (2) > by group (1) > a rule for everyone (0).
    pub principal: u8,
    /// A rule limited to some operations (1) > one for all (0).
    pub operation: u8,
}

/// The outcome for one request.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'p> {
    pub action: Action,
    pub settings: &'p Settings,
    /// `path:line` of the deciding rule, or of the default action.
    pub rule_id: &'p str,
    /// The deciding rule; `None` when the default action decided.
    pub rule: Option<&'p Rule>,
}

/// Why a matching rule did not decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    /// The winner is more specific.
    LessSpecific,
    /// Same specificity; the winner denies.
    DenyBeatsAllow,
    /// Same specificity and action; the winner comes later in load order.
    EarlierThanWinner,
    /// A U2F request that no exact rule matched, where wildcard rules
    /// exist: it is refused, whatever matched.
    U2fUnattributable,
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LossReason::LessSpecific => "less specific",
            LossReason::DenyBeatsAllow => "deny beats allow at equal specificity",
            LossReason::EarlierThanWinner => "a later rule of equal specificity and action wins",
            LossReason::U2fUnattributable => {
                "a U2F request that no exact rule matches is refused where wildcard rules apply"
            }
        })
    }
}

/// A rule that matched a request.
#[derive(Debug, Clone)]
pub struct Match<'p> {
    pub rule: &'p Rule,
    /// The pattern of the rule that matched (the most specific one).
    pub pattern: &'p RpPattern,
    pub specificity: Specificity,
    /// `None` for the winner.
    pub lost: Option<LossReason>,
}

/// A decision, with everything that matched.
#[derive(Debug, Clone)]
pub struct Explanation<'p> {
    /// The rp ID as compared (normalized).
    pub rp_id: String,
    pub decision: Decision<'p>,
    /// The winner first, then the losers from most to least specific.
    pub matches: Vec<Match<'p>>,
}

/// The order of precedence: most specific, then deny over allow, then later.
fn precedence(rule: &Rule, specificity: Specificity) -> (Specificity, bool, u32) {
    (specificity, rule.action == Action::Deny, rule.order)
}

impl Rule {
    /// How this rule matches the principal, if it does. A rule without
    /// users and groups is for everyone; one with them never matches a
    /// device that has no user.
    fn principal_rank(&self, principal: &Principal) -> Option<u8> {
        if self.users.is_empty() && self.groups.is_empty() {
            return Some(0);
        }
        let user = principal.user.as_deref()?;
        if self.users.iter().any(|u| **u == *user) {
            return Some(2);
        }
        if self.groups.iter().any(|g| principal.groups.iter().any(|pg| **g == **pg)) {
            return Some(1);
        }
        None
    }

    /// Whether this rule applies to the principal for some rp ID.
    pub fn applies_to(&self, principal: &Principal) -> bool {
        self.principal_rank(principal).is_some()
    }

    fn operation_rank(&self, operation: Operation) -> Option<u8> {
        match self.operation_mask() {
            0 => Some(0),
            mask if mask & operation.bit() != 0 => Some(1),
            _ => None,
        }
    }
}

impl Policy {
    /// Calls `f` for every rule matching the request (a rule may come more
    /// than once, most specific pattern first).
    fn for_each_match<'p>(&'p self, rp_id: &str, request: &Request<'_>, mut f: impl FnMut(&'p Rule, u16, Specificity)) {
        let mut visit = |ids: &[u32], rp_rank: u16| {
            for &id in ids {
                let Some(rule) = self.rules.get(id as usize) else { continue };
                let Some(operation) = rule.operation_rank(request.operation) else { continue };
                let Some(principal) = rule.principal_rank(request.principal) else { continue };
                f(rule, rp_rank, Specificity { rp: rp_rank, principal, operation });
            }
        };
        if request.ctap1 {
            // A U2F application parameter: exact rp IDs by hash, and `*`.
            if let Some(ids) = self.index.u2f.get(rp_id) {
                visit(ids, EXACT_RANK);
            }
            visit(&self.index.any, 0);
            return;
        }
        if let Some(ids) = self.index.exact.get(rp_id) {
            visit(ids, EXACT_RANK);
        }
        if !self.index.wildcard.is_empty() && is_host_name(rp_id) {
            // Parent domains, longest first: a.b.example.com → b.example.com, example.com, com.
            for (i, byte) in rp_id.bytes().enumerate() {
                if byte == b'.' {
                    let suffix = &rp_id[i + 1..];
                    if let Some(ids) = self.index.wildcard.get(suffix) {
                        visit(ids, wildcard_rank(suffix));
                    }
                }
            }
        }
        visit(&self.index.any, 0);
    }

    /// The decision for a request.
    ///
    /// A U2F request (`ctap1`: the rp ID is the hex SHA-256 of the
    /// application ID) matches exact patterns by hash, `*` and the default,
    /// but no wildcard; a CTAP2 request is never matched by hash.
    /// So that a client cannot slip past a wildcard rule by speaking U2F,
    /// such a request is refused when no exact rule matches it and some
    /// wildcard rule applies to this user and operation.
    pub fn evaluate(&self, request: &Request<'_>) -> Decision<'_> {
        let rp_id = crate::normalize_rp_id(request.rp_id);
        let mut best: Option<(&Rule, (Specificity, bool, u32))> = None;
        self.for_each_match(&rp_id, request, |rule, _, specificity| {
            let key = precedence(rule, specificity);
            if best.is_none_or(|(_, best_key)| key > best_key) {
                best = Some((rule, key));
            }
        });
        let exact = best.is_some_and(|(_, (specificity, _, _))| specificity.rp == EXACT_RANK);
        if !exact && self.u2f_unattributable(request) {
            return self.u2f_refusal();
        }
        match best {
            Some((rule, _)) => self.decision_by(rule),
            None => self.default_decision(),
        }
    }

    fn u2f_unattributable(&self, request: &Request<'_>) -> bool {
        request.ctap1
            && self.index.wildcard.values().flatten().any(|&id| {
                self.rules.get(id as usize).is_some_and(|rule| {
                    rule.operation_rank(request.operation).is_some() && rule.principal_rank(request.principal).is_some()
                })
            })
    }

    fn u2f_refusal(&self) -> Decision<'_> {
        Decision { action: Action::Deny, settings: &NO_SETTINGS, rule_id: U2F_UNATTRIBUTABLE, rule: None }
    }

    fn decision_by<'p>(&'p self, rule: &'p Rule) -> Decision<'p> {
        Decision { action: rule.action, settings: &rule.settings, rule_id: &rule.id, rule: Some(rule) }
    }

    fn default_decision(&self) -> Decision<'_> {
        Decision {
            action: self.default.action,
            settings: &self.default.settings,
            rule_id: &self.default.id,
            rule: None,
        }
    }

    /// The decision, the rule that made it, and every other rule that
    /// matched with the reason it lost.
    pub fn explain(&self, request: &Request<'_>) -> Explanation<'_> {
        let rp_id: Cow<'_, str> = crate::normalize_rp_id(request.rp_id);
        let mut matches: Vec<Match<'_>> = Vec::new();
        self.for_each_match(&rp_id, request, |rule, rp_rank, specificity| {
            if matches.iter().any(|m| std::ptr::eq(m.rule, rule)) {
                return; // already seen through a more specific pattern
            }
            let pattern_matches = |p: &RpPattern| if request.ctap1 { p.matches_u2f(&rp_id) } else { p.matches(&rp_id) };
            let pattern = rule.rp.iter().find(|p| p.rank() == rp_rank && pattern_matches(p)).unwrap_or(&RpPattern::Any);
            matches.push(Match { rule, pattern, specificity, lost: None });
        });
        matches.sort_by_key(|m| std::cmp::Reverse(precedence(m.rule, m.specificity)));
        let exact = matches.first().is_some_and(|m| m.specificity.rp == EXACT_RANK);
        if !exact && self.u2f_unattributable(request) {
            for m in &mut matches {
                m.lost = Some(LossReason::U2fUnattributable);
            }
            return Explanation { rp_id: rp_id.into_owned(), decision: self.u2f_refusal(), matches };
        }
        let decision = match matches.first() {
            Some(winner) => self.decision_by(winner.rule),
            None => self.default_decision(),
        };
        if let Some((winner, losers)) = matches.split_first_mut() {
            for loser in losers {
                loser.lost = Some(if loser.specificity < winner.specificity {
                    LossReason::LessSpecific
                } else if loser.rule.action != winner.rule.action {
                    LossReason::DenyBeatsAllow
                } else {
                    LossReason::EarlierThanWinner
                });
            }
        }
        Explanation { rp_id: rp_id.into_owned(), decision, matches }
    }

    /// The minimum PIN length this policy demands of the device of
    /// `principal`, with the rule or default that demands the most. The
    /// PIN is one for every relying party, so the strictest allow rule that
    /// applies to the user counts, whatever its rp IDs.
    pub fn min_pin_length(&self, principal: &Principal) -> Option<(u8, &str)> {
        let mut best: Option<(u8, &str)> = self.default.settings.min_pin_length.map(|n| (n, self.default_pin_origin()));
        for rule in &self.rules {
            if rule.action != Action::Allow || !rule.applies_to(principal) {
                continue;
            }
            if let Some(n) = rule.settings.min_pin_length {
                if best.is_none_or(|(b, _)| n > b) {
                    best = Some((n, &rule.id));
                }
            }
        }
        best
    }

    fn default_pin_origin(&self) -> &str {
        self.default.origins.iter().find(|(k, _)| *k == "min_pin_length").map_or(&*self.default.id, |(_, o)| o)
    }
}
