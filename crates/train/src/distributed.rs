//! Training across processes: one process per device group (a *rank*), launched together by
//! `mpirun` or `srun`, each drawing the same global batches and taking its own share of
//! them. The loop needs few collective operations, named by [`Collective`]: element-wise
//! sums of gradients (in rank order, so that every rank gets the same bits on every run),
//! rank 0's bytes to every rank (the starting state), and every rank's bytes to every rank
//! (small checks and counts). [`Solo`] is the one-process case; the `xception-mpi` crate
//! implements them over MPI.
//!
//! What crosses, and when: before training, each rank's fingerprint (config hash, devices,
//! dataset sizes, classes) and then rank 0's state (weights, EMA, optimizer, position) with a
//! checksum every rank compares; after each loader batch, the BatchNorm running statistics
//! (averaged); after each optimizer step, the gradients with the step's metrics, image count
//! and stop requests (summed); after each evaluation, the counts (summed).

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};

/// Elements per gradient bucket: 6.5 M floats, 26 MB, as PyTorch DDP's 25 MB buckets.
pub const BUCKET: usize = 6_500_000;

/// The processes training together, and the collective operations between them. Every rank
/// must call the same operations in the same order with the same sizes.
pub trait Collective {
    /// This process's rank, from 0 (the rank that reads and writes the run's files).
    fn rank(&self) -> usize;
    /// Processes training together.
    fn ranks(&self) -> usize;
    /// Rank `rank` and where it runs, for messages (`rank 2 on node7`).
    fn describe(&self, rank: usize) -> String;
    /// Replaces `values` by their element-wise sum over all ranks, added in rank order
    /// (`((v0 + v1) + v2) + ...`), so that every rank holds the same bits, run after run.
    fn sum(&self, values: &mut [f32]) -> Result<(), CollectiveError>;
    /// Replaces `bytes` by rank 0's.
    fn broadcast(&self, bytes: &mut Vec<u8>) -> Result<(), CollectiveError>;
    /// Every rank's `bytes`, in rank order (for small messages).
    fn gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError>;
}

/// One process training alone: every operation leaves its input as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }

    fn ranks(&self) -> usize {
        1
    }

    fn describe(&self, rank: usize) -> String {
        format!("rank {rank}")
    }

    fn sum(&self, _values: &mut [f32]) -> Result<(), CollectiveError> {
        Ok(())
    }

    fn broadcast(&self, _bytes: &mut Vec<u8>) -> Result<(), CollectiveError> {
        Ok(())
    }

    fn gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        Ok(vec![bytes.to_vec()])
    }
}

/// A collective operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{operation} between the processes failed on {place}: {reason}")]
pub struct CollectiveError {
    /// The operation (`sum of gradients`, `broadcast`, ...).
    pub operation: String,
    /// The rank that saw the failure, and where it runs.
    pub place: String,
    /// What went wrong.
    pub reason: String,
}

/// Waits until every rank gets here.
pub fn barrier(world: &dyn Collective) -> Result<(), CollectiveError> {
    world.gather(&[]).map(drop)
}

/// The element-wise sum over ranks of `values`, exactly in f64 up to rounding, added in rank
/// order (counts and sums of an evaluation).
pub fn sum_f64(world: &dyn Collective, values: &[f64]) -> Result<Vec<f64>, CollectiveError> {
    if world.ranks() == 1 {
        return Ok(values.to_vec());
    }
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut total = vec![0.0; values.len()];
    for (rank, theirs) in world.gather(&bytes)?.into_iter().enumerate() {
        if theirs.len() != bytes.len() {
            return Err(CollectiveError {
                operation: "sum of counts".into(),
                place: world.describe(rank),
                reason: format!("{} bytes, expected {}", theirs.len(), bytes.len()),
            });
        }
        for (sum, chunk) in total.iter_mut().zip(theirs.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(chunk);
            *sum += f64::from_le_bytes(le);
        }
    }
    Ok(total)
}

/// What must be equal on every rank before training, as `(what, value)` pairs.
pub type Fingerprint = Vec<(String, String)>;

/// Compares every rank's fingerprint with rank 0's: `Err` names the first rank and entry that
/// differ. Every rank sees every fingerprint, so every rank reaches the same verdict.
pub fn check_same(
    world: &dyn Collective,
    fingerprint: &Fingerprint,
) -> Result<Result<(), String>, CollectiveError> {
    let text = serde_json::to_vec(fingerprint).unwrap_or_default();
    let all = world.gather(&text)?;
    let parse = |bytes: &[u8]| serde_json::from_slice::<Fingerprint>(bytes).unwrap_or_default();
    let reference = parse(&all[0]);
    for (rank, bytes) in all.iter().enumerate().skip(1) {
        let theirs = parse(bytes);
        for ((what, ours), (_, other)) in reference.iter().zip(&theirs) {
            if ours != other {
                return Ok(Err(format!(
                    "{} has {what} = {other}, {} has {ours}: every rank must run the same config on the same data",
                    world.describe(rank),
                    world.describe(0)
                )));
            }
        }
        if theirs.len() != reference.len() {
            return Ok(Err(format!(
                "{} describes its run differently from {}",
                world.describe(rank),
                world.describe(0)
            )));
        }
    }
    Ok(Ok(()))
}

/// A 64-bit FNV-1a hash, for checksums that every rank computes the same way.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    /// Adds `bytes`.
    pub fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// Named flat tensors and a JSON document packed into bytes (a JSON header of names and
/// lengths, then the values as little-endian f32): how rank 0's starting state travels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Packet {
    /// Any JSON value (the run's position).
    pub document: serde_json::Value,
    /// Groups (`model`, `ema`, `optimizer`) of tensors by name, in name order.
    pub groups: BTreeMap<String, BTreeMap<String, Vec<f32>>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PacketHeader {
    document: serde_json::Value,
    tensors: Vec<(String, String, usize)>,
}

impl Packet {
    /// Adds `tensors` (read back from their device) as group `group`.
    pub fn add(&mut self, group: &str, tensors: impl IntoIterator<Item = (String, Tensor<1>)>) {
        let entry = self.groups.entry(group.to_string()).or_default();
        for (name, tensor) in tensors {
            let values = tensor.into_data().iter::<f32>().collect();
            entry.insert(name, values);
        }
    }

    /// The group `group` as tensor data by name (empty when absent).
    pub fn data(&self, group: &str) -> BTreeMap<String, TensorData> {
        self.groups
            .get(group)
            .map(|tensors| {
                tensors
                    .iter()
                    .map(|(name, values)| {
                        (
                            name.clone(),
                            TensorData::new(values.clone(), [values.len()]),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The group `group` as tensors on `device`, by name.
    pub fn tensors(&self, group: &str, device: &Device) -> BTreeMap<String, Tensor<1>> {
        self.data(group)
            .into_iter()
            .map(|(name, data)| (name, Tensor::from_data(data, device)))
            .collect()
    }

    /// The packet as bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut tensors = Vec::new();
        let mut values: Vec<u8> = Vec::new();
        for (group, named) in &self.groups {
            for (name, data) in named {
                tensors.push((group.clone(), name.clone(), data.len()));
                values.extend(data.iter().flat_map(|v| v.to_le_bytes()));
            }
        }
        let header = PacketHeader {
            document: self.document.clone(),
            tensors,
        };
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header);
        bytes.extend(values);
        bytes
    }

    /// A packet from [`Self::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (length, rest) = bytes
            .split_first_chunk::<8>()
            .ok_or("shorter than its header")?;
        let length = usize::try_from(u64::from_le_bytes(*length)).map_err(|e| e.to_string())?;
        if rest.len() < length {
            return Err("shorter than its header says".into());
        }
        let (header, mut values) = rest.split_at(length);
        let header: PacketHeader = serde_json::from_slice(header).map_err(|e| e.to_string())?;
        let mut packet = Packet {
            document: header.document,
            groups: BTreeMap::new(),
        };
        for (group, name, len) in header.tensors {
            if values.len() < len * 4 {
                return Err(format!("tensor {group}/{name} is cut short"));
            }
            let (mine, rest) = values.split_at(len * 4);
            values = rest;
            let data = mine
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            packet.groups.entry(group).or_default().insert(name, data);
        }
        if !values.is_empty() {
            return Err(format!("{} bytes more than its header says", values.len()));
        }
        Ok(packet)
    }

    /// A checksum of everything the packet holds (names, values, document).
    pub fn checksum(&self) -> u64 {
        let mut hash = Fnv1a::default();
        hash.write(self.document.to_string().as_bytes());
        for (group, named) in &self.groups {
            for (name, values) in named {
                hash.write(group.as_bytes());
                hash.write(name.as_bytes());
                for value in values {
                    hash.write(&value.to_le_bytes());
                }
            }
        }
        hash.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_survives_its_bytes_and_a_cut_is_refused() {
        let mut packet = Packet {
            document: serde_json::json!({"step": 7}),
            ..Default::default()
        };
        packet
            .groups
            .entry("model".into())
            .or_default()
            .insert("a.weight".into(), vec![1.0, -2.5, f32::MIN_POSITIVE]);
        packet
            .groups
            .entry("optimizer".into())
            .or_default()
            .insert("a.weight.momentum".into(), vec![0.25]);
        let bytes = packet.encode();
        let back = Packet::decode(&bytes).expect("decodes");
        assert_eq!(back, packet);
        assert_eq!(back.checksum(), packet.checksum());
        assert!(Packet::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut changed = packet.clone();
        changed
            .groups
            .get_mut("optimizer")
            .expect("group")
            .insert("a.weight.momentum".into(), vec![0.5]);
        assert_ne!(changed.checksum(), packet.checksum());
    }

    #[test]
    fn alone_every_operation_keeps_its_input() {
        let mut values = vec![1.0, 2.0];
        Solo.sum(&mut values).expect("sum");
        assert_eq!(values, [1.0, 2.0]);
        assert_eq!(sum_f64(&Solo, &[3.0]).expect("sum"), [3.0]);
        let fingerprint = vec![("config hash".to_string(), "ab".to_string())];
        assert_eq!(check_same(&Solo, &fingerprint).expect("gather"), Ok(()));
    }
}
