//! The address book: PBFT's replicas and clients as transport nodes (see [`super`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::net::NodeId;

/// Which transport node is replica `i` and which is the endpoint of client `c`: see the
/// module docs of [`super`]. Every replica and endpoint of a group uses the same book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    replicas: Vec<NodeId>,
    by_node: BTreeMap<NodeId, u32>,
    clients: BTreeMap<u64, NodeId>,
}

impl Addresses {
    /// Replica `i` at `replicas[i]`; the nodes must be distinct. No clients yet.
    pub fn new(replicas: Vec<NodeId>) -> Result<Addresses> {
        let mut by_node = BTreeMap::new();
        for (i, &n) in replicas.iter().enumerate() {
            if by_node.insert(n, i as u32).is_some() {
                return Err(Error::invalid(format!(
                    "pbft addresses: {n} is given for two replicas"
                )));
            }
        }
        Ok(Addresses {
            replicas,
            by_node,
            clients: BTreeMap::new(),
        })
    }

    /// Replicas `0..n` at nodes `1..=n` (replica `i` is `NodeId(i + 1)`).
    pub fn numbered(n: usize) -> Addresses {
        Addresses::new((1..=n as u64).map(NodeId).collect()).expect("distinct ids")
    }

    /// Client `client` is reached at endpoint `node` (not a replica's node). A client may be
    /// moved to another endpoint by adding it again.
    pub fn add_client(&mut self, client: u64, node: NodeId) -> Result<()> {
        if self.by_node.contains_key(&node) {
            return Err(Error::invalid(format!(
                "pbft addresses: client {client}'s endpoint {node} is a replica"
            )));
        }
        self.clients.insert(client, node);
        Ok(())
    }

    /// This book with clients `ids` at endpoint `node` (see [`Addresses::add_client`]).
    pub fn with_clients(
        mut self,
        node: NodeId,
        ids: impl IntoIterator<Item = u64>,
    ) -> Result<Addresses> {
        for c in ids {
            self.add_client(c, node)?;
        }
        Ok(self)
    }

    /// The number of replicas.
    pub fn n(&self) -> usize {
        self.replicas.len()
    }

    /// The replicas' nodes, replica `i` at index `i`.
    pub fn replicas(&self) -> &[NodeId] {
        &self.replicas
    }

    /// The node of replica `i`.
    pub fn replica_node(&self, i: u32) -> Option<NodeId> {
        self.replicas.get(i as usize).copied()
    }

    /// The replica whose node is `node`.
    pub fn replica_of(&self, node: NodeId) -> Option<u32> {
        self.by_node.get(&node).copied()
    }

    /// The endpoint of client `client`.
    pub fn client_node(&self, client: u64) -> Option<NodeId> {
        self.clients.get(&client).copied()
    }

    /// The clients reached at endpoint `node`.
    pub fn clients_at(&self, node: NodeId) -> impl Iterator<Item = u64> + '_ {
        self.clients
            .iter()
            .filter(move |(_, &n)| n == node)
            .map(|(&c, _)| c)
    }

    /// Every client endpoint, once.
    pub fn endpoints(&self) -> BTreeSet<NodeId> {
        self.clients.values().copied().collect()
    }
}
