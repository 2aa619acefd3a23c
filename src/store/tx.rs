//! The writer's transaction with its hot tables opened once (issue 8).
//!
//! Opening a redb table looks its definition up in the table tree, and dropping it writes
//! its root back: about 1.5 µs each, ten times per message when every step of an ingest
//! opened the tables it touched (11 % of the writer's CPU in a profile). A batch now opens
//! each hot table at its first use and keeps it until the commit.
//!
//! The rule: a hot table is opened **only** through its method here. redb refuses a second
//! open of a table that is open (`TableAlreadyOpen`) at run time, and would fail the whole
//! batch. Every other table is opened from [`Tx::cold`], for as long as the caller needs it.

use redb::{Table, WriteTransaction};

use super::audit::AUDIT;
use super::index::PENDING_INDEX;
use super::{ACKS, DEDUP, DELIVERED, ORDERS, OUTBOX, RAW, RECORDS, StoreError, db_err};

macro_rules! hot_tables {
    ($($name:ident: $def:expr => $k:ty, $v:ty;)*) => {
        /// A write transaction and the hot tables it has opened so far.
        pub(crate) struct Tx<'t> {
            txn: &'t WriteTransaction,
            /// The time of the request being applied (ms since the epoch): every record,
            /// journal entry and ACK the request writes carries it. Set per request by the
            /// writer (the request's own time when it comes from a replicated log), so that
            /// applying the same requests gives the same store (D23).
            pub(crate) now: u64,
            $($name: Option<Table<'t, $k, $v>>,)*
        }

        impl<'t> Tx<'t> {
            pub(crate) fn new(txn: &'t WriteTransaction) -> Tx<'t> {
                Tx { txn, now: crate::time::now_ms(), $($name: None,)* }
            }

            $(
                #[doc = concat!("The `", stringify!($def), "` table, opened at the first call.")]
                pub(crate) fn $name(&mut self) -> Result<&mut Table<'t, $k, $v>, StoreError> {
                    let txn = self.txn;
                    Ok(match &mut self.$name {
                        Some(t) => t,
                        slot => slot.insert(txn.open_table($def).map_err(db_err)?),
                    })
                }
            )*
        }
    };
}

hot_tables! {
    records: RECORDS => u64, &'static [u8];
    raw: RAW => u64, &'static [u8];
    acks: ACKS => u64, &'static [u8];
    dedup: DEDUP => &'static str, &'static [u8];
    outbox: OUTBOX => &'static [u8], &'static [u8];
    delivered: DELIVERED => &'static [u8], u64;
    orders: ORDERS => &'static str, &'static str;
    audit: AUDIT => u64, &'static [u8];
    pending_index: PENDING_INDEX => u64, &'static [u8];
}

impl<'t> Tx<'t> {
    /// The transaction, to open a table that is not hot (never one of the above).
    pub(crate) fn cold(&self) -> &'t WriteTransaction {
        self.txn
    }
}
