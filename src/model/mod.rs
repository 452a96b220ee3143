//! Plain data the decisions work on: object keys, the NAD type, and the
//! compact pod projection that both controllers and `plan` share.

mod labels;
pub mod nad;
pub mod pod;
pub mod text;

pub use crate::key::ObjectKey;
pub use labels::Labels;
pub use nad::{NadMeta, NadWatched, NamespaceMeta, NetworkAttachmentDefinition, SpecConfig};
pub use pod::{PodLite, PodView};
