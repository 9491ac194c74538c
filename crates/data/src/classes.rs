//! The 1000 ImageNet (ILSVRC2012) classes: WordNet ids, the devkit's ILSVRC2012_IDs and
//! human-readable names, bundled so that no download is needed.

use std::collections::HashMap;
use std::sync::OnceLock;

/// One ImageNet class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageNetClass {
    /// WordNet id, e.g. `n01440764`.
    pub wnid: &'static str,
    /// The devkit's `ILSVRC2012_ID` (1..=1000), the label used by
    /// `ILSVRC2012_validation_ground_truth.txt`. Its order is NOT the sorted-wnid order.
    pub ilsvrc2012_id: u16,
    /// Human-readable name, as in `LOC_synset_mapping.txt`.
    pub name: &'static str,
}

const TABLE: &str = include_str!("../data/imagenet_classes.tsv");

/// The 1000 classes in sorted-wnid order: the class index Keras and timm use.
pub fn imagenet_classes() -> &'static [ImageNetClass] {
    static CLASSES: OnceLock<Vec<ImageNetClass>> = OnceLock::new();
    CLASSES.get_or_init(|| {
        TABLE
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let mut fields = line.splitn(3, '\t');
                let (Some(wnid), Some(id), Some(name)) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    panic!("bundled ImageNet table is malformed at {line:?}")
                };
                let ilsvrc2012_id = id.parse().expect("bundled ILSVRC2012_ID is a number");
                ImageNetClass {
                    wnid,
                    ilsvrc2012_id,
                    name,
                }
            })
            .collect()
    })
}

/// Class index (sorted-wnid order) of a devkit `ILSVRC2012_ID`.
pub fn class_index_of_ilsvrc2012_id(id: u16) -> Option<usize> {
    static BY_ID: OnceLock<HashMap<u16, usize>> = OnceLock::new();
    BY_ID
        .get_or_init(|| {
            imagenet_classes()
                .iter()
                .enumerate()
                .map(|(index, class)| (class.ilsvrc2012_id, index))
                .collect()
        })
        .get(&id)
        .copied()
}

/// The bundled class of a WordNet id, if it is one of the 1000.
pub fn imagenet_class(wnid: &str) -> Option<&'static ImageNetClass> {
    let classes = imagenet_classes();
    classes
        .binary_search_by(|class| class.wnid.cmp(wnid))
        .ok()
        .map(|index| &classes[index])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_1000_sorted_classes_with_every_id_once() {
        let classes = imagenet_classes();
        assert_eq!(classes.len(), 1000);
        assert!(classes.windows(2).all(|w| w[0].wnid < w[1].wnid));
        let mut ids: Vec<_> = classes.iter().map(|c| c.ilsvrc2012_id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=1000).collect::<Vec<u16>>());
        assert_eq!(classes[0].wnid, "n01440764");
        assert!(classes[0].name.starts_with("tench"));
    }

    #[test]
    fn devkit_ids_remap_to_sorted_wnid_indices() {
        // ILSVRC2012_ID 1 is the kit fox, not the tench that sorted order puts first.
        let kit_fox = class_index_of_ilsvrc2012_id(1).expect("id 1 exists");
        assert_eq!(imagenet_classes()[kit_fox].wnid, "n02119789");
        assert_eq!(kit_fox, 278);
        // The first validation image's label, 490, is the sea snake, class 65.
        assert_eq!(class_index_of_ilsvrc2012_id(490), Some(65));
        assert_eq!(imagenet_classes()[65].wnid, "n01751748");
        // The last ID, 1000, is the dumbbell.
        let dumbbell = class_index_of_ilsvrc2012_id(1000).expect("id 1000 exists");
        assert_eq!(imagenet_classes()[dumbbell].wnid, "n03255030");
        assert_eq!(class_index_of_ilsvrc2012_id(0), None);
        assert_eq!(class_index_of_ilsvrc2012_id(1001), None);
    }

    #[test]
    fn looks_up_names_by_wnid() {
        let class = imagenet_class("n01751748").expect("sea snake");
        assert!(class.name.contains("sea snake"));
        assert_eq!(imagenet_class("n99999999"), None);
    }
}
