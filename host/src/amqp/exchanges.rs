//! Outputs to an exchange the broker does not know: a publish there makes
//! the broker close the publishing channel (404), which would fail every
//! other publish on it, so each exchange is checked once per connection, on
//! a throwaway channel of its own, before the first output to it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use futures_util::StreamExt as _;
use lapin::ExchangeKind;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::{FieldTable, ShortString};

use super::publisher::{PublishError, Publisher};
use super::{CALL_TIMEOUT, Error};

/// Exchanges checked at once, each on a throwaway channel of its own.
const PROBES_AT_ONCE: usize = 16;

impl Publisher {
    /// Of `exchanges`, those not known to exist on this connection, each
    /// once: what [`Publisher::check_exchanges`] must check before
    /// anything is published to them. Usually none, for one lock and a
    /// lookup per name.
    pub fn unknown_exchanges<'a>(
        &self,
        exchanges: impl IntoIterator<Item = &'a str>,
    ) -> Vec<&'a str> {
        let mut unknown = Vec::new();
        let known = self.exchanges.lock().expect("exchanges lock");
        let mut seen = HashSet::new();
        for e in exchanges {
            if !e.is_empty() && !known.contains(e) && seen.insert(e) {
                unknown.push(e);
            }
        }
        unknown
    }

    /// Makes sure each of `unknown` exists before anything is published to
    /// it: once per connection, with a passive declare on a throwaway
    /// channel, so that a missing one fails the outputs to it alone (the
    /// broker closes the throwaway channel, not the publishing one). They
    /// are checked together, [`PROBES_AT_ONCE`] at a time, within one
    /// [`CALL_TIMEOUT`] (a missing one is checked again by every batch
    /// that names it: it may have been declared since). Returns those that
    /// failed, with why.
    pub async fn check_exchanges<'a>(&self, unknown: Vec<&'a str>) -> HashMap<&'a str, String> {
        if unknown.is_empty() {
            return HashMap::new();
        }
        // A few at a time: each opens a channel, and a guest can name up to
        // its publish limit of exchanges per message.
        let checks: Vec<_> = unknown
            .iter()
            .map(|e| self.check_exchange_bounded(e))
            .collect();
        let mut checked = Vec::with_capacity(unknown.len());
        let all = async {
            let mut checks = futures_util::stream::iter(checks).buffered(PROBES_AT_ONCE);
            while let Some(c) = checks.next().await {
                checked.push(c);
            }
        };
        let _ = tokio::time::timeout(CALL_TIMEOUT, all).await;
        unknown
            .into_iter()
            .enumerate()
            .filter_map(|(n, e)| match checked.get(n) {
                Some(Ok(())) => None,
                Some(Err(why)) => Some((e, why.to_string())),
                None => Some((
                    e,
                    format!("exchange {e:?} not checked within {CALL_TIMEOUT:?}"),
                )),
            })
            .collect()
    }

    async fn check_exchange_bounded(&self, exchange: &str) -> Result<(), PublishError> {
        let what = || format!("checking that exchange {exchange:?} exists");
        match tokio::time::timeout(CALL_TIMEOUT, self.check_exchange_unbounded(exchange)).await {
            Ok(checked) => checked,
            Err(_) => Err(PublishError::Unanswered(Error::Timeout {
                what: what(),
                after: CALL_TIMEOUT,
            })),
        }
    }

    async fn check_exchange_unbounded(&self, exchange: &str) -> Result<(), PublishError> {
        let known =
            |set: &Mutex<HashSet<String>>| set.lock().expect("exchanges lock").contains(exchange);
        if exchange.is_empty() || known(&self.exchanges) {
            return Ok(());
        }
        let name = ShortString::try_new(exchange)
            .map_err(|_| PublishError::Invalid("exchange name is longer than 255 bytes".into()))?;
        let ch = self.conn.create_channel().await?;
        // Marked before the check, whose 404 may reach the connection's
        // event stream before the check returns; unmarked only when it
        // exists (then no 404 comes).
        self.probed
            .lock()
            .expect("probed exchanges lock")
            .insert(exchange.to_string());
        let opts = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let checked = ch
            .exchange_declare(name, ExchangeKind::Direct, opts, FieldTable::default())
            .await;
        match checked {
            Ok(()) => {
                let _ = ch.close(200, "exchange checked".into()).await;
                self.probed
                    .lock()
                    .expect("probed exchanges lock")
                    .remove(exchange);
                self.exchanges
                    .lock()
                    .expect("exchanges lock")
                    .insert(exchange.to_string());
                Ok(())
            }
            // The broker closed the throwaway channel with it.
            Err(e) if not_found(&e) => Err(PublishError::NoExchange {
                exchange: exchange.into(),
            }),
            Err(e) => {
                if ch.status().connected() {
                    let _ = ch.close(200, "exchange check failed".into()).await;
                }
                Err(e.into())
            }
        }
    }
}

/// Whether the broker answered 404 (no such exchange or queue).
fn not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}
