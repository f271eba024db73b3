//! Outputs to an exchange the broker does not know: a publish there makes
//! the broker close the publishing channel (404), which would fail every
//! other publish on it, so each exchange is checked once per connection, on
//! a throwaway channel of its own, before the first output to it.

use std::collections::HashSet;
use std::sync::Mutex;

use lapin::ExchangeKind;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::{FieldTable, ShortString};

use super::publisher::{PublishError, Publisher};
use super::{CALL_TIMEOUT, Error};

impl Publisher {
    /// Makes sure `exchange` exists before anything is published to it:
    /// once per connection, with a passive declare on a throwaway channel,
    /// so that a missing one fails this output alone (the broker closes
    /// the throwaway channel, not the publishing one).
    ///
    /// An exchange already known costs a lookup and no future: every output
    /// goes through here, and the check's own state (a channel to open, a
    /// declare, a timer) is boxed only when it runs, so it does not make
    /// every output's future larger.
    pub(super) async fn check_exchange(&self, exchange: &str) -> Result<(), PublishError> {
        if exchange.is_empty()
            || self
                .exchanges
                .lock()
                .expect("exchanges lock")
                .contains(exchange)
        {
            return Ok(());
        }
        Box::pin(self.check_exchange_bounded(exchange)).await
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
