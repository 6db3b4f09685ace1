//! A small connection pool so several workers can query the store at once.
//! Connections that hit a protocol error are dropped, not reused.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use nix_outbox_core::StoreDir;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::address::StoreAddress;
use crate::error::StoreError;
use crate::protocol::Connection;

struct Inner {
    address: StoreAddress,
    store_dir: StoreDir,
    idle: Mutex<Vec<Connection>>,
    slots: Arc<Semaphore>,
    max: usize,
}

/// Cheap to clone; all clones share the connections.
#[derive(Clone)]
pub struct StorePool(Arc<Inner>);

impl StorePool {
    pub fn new(address: StoreAddress, store_dir: StoreDir, max_connections: usize) -> Self {
        let max = max_connections.max(1);
        Self(Arc::new(Inner {
            address,
            store_dir,
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(max)),
            max,
        }))
    }

    pub fn store_dir(&self) -> &StoreDir {
        &self.0.store_dir
    }

    pub fn max_connections(&self) -> usize {
        self.0.max
    }

    /// A connection for exclusive use until the guard drops.
    pub async fn get(&self) -> Result<PooledConnection, StoreError> {
        let permit = self
            .0
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Internal("pool closed".into()))?;
        let idle = self.0.idle.lock().expect("pool lock").pop();
        let conn = match idle {
            Some(c) => c,
            None => self.0.address.connect().await?,
        };
        Ok(PooledConnection {
            conn: Some(conn),
            pool: self.0.clone(),
            _permit: permit,
        })
    }
}

pub struct PooledConnection {
    conn: Option<Connection>,
    pool: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl Deref for PooledConnection {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("present until drop")
    }
}

impl DerefMut for PooledConnection {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("present until drop")
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take()
            && !c.is_broken()
            && c.reader.is_some()
        {
            self.pool.idle.lock().expect("pool lock").push(c);
        }
    }
}
