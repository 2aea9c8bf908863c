//! Who claimed each identity, so that no one caller can fill the index.
//!
//! A tenant is the product an API key is bound to (`product:<id>`) or an
//! unbound key (`key:<id>`); the log records it with each event it sent
//! ([`crate::record::Record::TenantEvent`]), so the counts here are a
//! projection of the log like the rest of the index. Index 0 is the
//! unattributed tenant: events from Kafka (an operator's own pipeline) and
//! events logged before tenants were recorded. It has no share of its own.

use std::collections::{BTreeMap, HashMap};

/// A tenant's index in [`Tenants`].
pub type TenantIx = u32;

/// The unattributed tenant.
pub const UNATTRIBUTED: TenantIx = 0;

#[derive(Debug, Clone)]
pub struct Tenants {
    names: Vec<String>,
    by_name: HashMap<String, TenantIx>,
    /// Identities each tenant holds, by index.
    held: Vec<u64>,
}

impl Default for Tenants {
    fn default() -> Tenants {
        Tenants {
            names: vec![String::new()],
            by_name: HashMap::from([(String::new(), UNATTRIBUTED)]),
            held: vec![0],
        }
    }
}

impl Tenants {
    /// The index of `name`, added if new.
    pub fn intern(&mut self, name: &str) -> TenantIx {
        if let Some(&ix) = self.by_name.get(name) {
            return ix;
        }
        let ix = TenantIx::try_from(self.names.len()).expect("fewer than 2^32 tenants");
        self.names.push(name.to_owned());
        self.by_name.insert(name.to_owned(), ix);
        self.held.push(0);
        ix
    }

    /// Tenants known, holding identities or not.
    pub fn count(&self) -> usize {
        self.names.len()
    }

    pub fn name(&self, ix: TenantIx) -> &str {
        &self.names[ix as usize]
    }

    pub fn held(&self, ix: TenantIx) -> u64 {
        self.held[ix as usize]
    }

    pub fn add(&mut self, ix: TenantIx, n: u64) {
        self.held[ix as usize] += n;
    }

    pub fn release(&mut self, ix: TenantIx, n: u64) {
        self.held[ix as usize] -= n;
    }

    /// The most any attributed tenant holds.
    pub fn held_max(&self) -> u64 {
        self.held.iter().skip(1).copied().max().unwrap_or(0)
    }

    /// Indices of the tenants holding identities, by name (the snapshot's
    /// order, so that it does not depend on the order tenants arrived in).
    pub fn holding_by_name(&self) -> Vec<TenantIx> {
        let mut ixs: Vec<TenantIx> = (0..self.names.len() as TenantIx)
            .filter(|&ix| ix == UNATTRIBUTED || self.held(ix) > 0)
            .collect();
        ixs.sort_by(|a, b| self.name(*a).cmp(self.name(*b)));
        ixs
    }
}

/// Identities held per hour of event time and tenant. The table keeps no
/// tenant per identity; a prune, which forgets whole hours, releases the
/// tenants' shares from these counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HourCounts(BTreeMap<(u32, TenantIx), u64>);

impl HourCounts {
    pub fn add(&mut self, hour: u32, tenant: TenantIx, n: u64) {
        *self.0.entry((hour, tenant)).or_default() += n;
    }

    /// Takes out the counts of the hours before `hour`.
    pub fn split_before(&mut self, hour: u32) -> HourCounts {
        let later = self.0.split_off(&(hour, 0));
        HourCounts(std::mem::replace(&mut self.0, later))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(hour, tenant, identities)`, by hour then tenant index.
    pub fn iter(&self) -> impl Iterator<Item = (u32, TenantIx, u64)> + '_ {
        self.0.iter().map(|(&(h, t), &n)| (h, t, n))
    }
}

/// Why claiming more identities is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoom {
    /// The whole index is at its bound.
    Full { held: u64, max: u64 },
    /// This tenant holds its share.
    Share { held: u64, max: u64 },
}

/// Whether `incoming` new identities fit: the index holds `total` of at
/// most `keys_max`, the caller's tenant `held` of at most `share_max`
/// (`None`: the unattributed tenant, bounded by the whole index only).
/// Pure, so it is tested against its rule directly.
pub fn room(
    total: u64,
    keys_max: u64,
    incoming: u64,
    tenant: Option<(u64, u64)>,
) -> Result<(), NoRoom> {
    if total + incoming > keys_max {
        return Err(NoRoom::Full {
            held: total,
            max: keys_max,
        });
    }
    match tenant {
        Some((held, max)) if held + incoming > max => Err(NoRoom::Share { held, max }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_unattributed_tenant_is_first_and_names_intern_once() {
        let mut t = Tenants::default();
        assert_eq!(t.intern(""), UNATTRIBUTED);
        let a = t.intern("product:acme");
        assert_eq!(t.intern("product:acme"), a);
        assert_ne!(t.intern("key:k1"), a);
        t.add(a, 2);
        t.release(a, 1);
        assert_eq!((t.held(a), t.held_max()), (1, 1));
        assert_eq!(t.holding_by_name(), vec![UNATTRIBUTED, a]);
    }

    #[test]
    fn hour_counts_split_at_an_hour_whatever_the_tenant() {
        let mut c = HourCounts::default();
        for (hour, tenant) in [(5, 3), (5, 0), (6, 0), (4, 9), (5, 3)] {
            c.add(hour, tenant, 1);
        }
        let old = c.split_before(5);
        assert_eq!(old.iter().collect::<Vec<_>>(), vec![(4, 9, 1)]);
        let rest = vec![(5, 0, 1), (5, 3, 2), (6, 0, 1)];
        assert_eq!(c.iter().collect::<Vec<_>>(), rest);
        assert!(c.split_before(0).is_empty());
    }

    proptest! {
        /// Tenants claiming in any order never take the index past its
        /// bound nor one tenant past its share; and a tenant is refused
        /// only when one of those would be passed.
        #[test]
        fn claims_stay_within_the_index_and_each_share(
            keys_max in 1u64..200,
            share_pct in 1u64..=100,
            claims in prop::collection::vec((0usize..4, 1u64..20), 1..100),
        ) {
            let share_max = keys_max * share_pct / 100;
            let mut held = [0u64; 4]; // 0 is unattributed
            for (tenant, incoming) in claims {
                let total: u64 = held.iter().sum();
                let bound = (tenant != 0).then(|| (held[tenant], share_max));
                match room(total, keys_max, incoming, bound) {
                    Ok(()) => held[tenant] += incoming,
                    Err(NoRoom::Full { .. }) => prop_assert!(total + incoming > keys_max),
                    Err(NoRoom::Share { .. }) => {
                        prop_assert!(tenant != 0 && held[tenant] + incoming > share_max)
                    }
                }
                prop_assert!(held.iter().sum::<u64>() <= keys_max);
                prop_assert!(held[1..].iter().all(|&h| h <= share_max));
            }
        }
    }
}
