//! Datasets on disk: ImageNet's train and validation layouts and any folder of class folders.
//!
//! Indexing only lists folders (no per-file `stat` beyond what listing returns) and stores a
//! folder index and a file name per sample, so ImageNet's 1.28 M training files index in
//! seconds and about 60 MB.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::classes::{class_index_of_ilsvrc2012_id, imagenet_class, imagenet_classes};
use crate::error::{DataError, io_error};
use crate::rng::hash_bytes;

/// Which part of a dataset to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The training images.
    Train,
    /// The validation images.
    Val,
}

/// How the images of a folder are labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Decide by looking at the folder: `train/` and `val/` subfolders, a flat validation
    /// folder with a label file, or a single folder of class folders split by a seeded
    /// fraction.
    #[default]
    Auto,
    /// `<root>/<class>/*`: the whole folder is the split asked for.
    Folders,
    /// The ILSVRC2012 devkit's flat `ILSVRC2012_val_*.JPEG` with
    /// `ILSVRC2012_validation_ground_truth.txt`.
    Devkit,
    /// Kaggle's flat validation folder with `LOC_val_solution.csv`.
    Kaggle,
    /// `<root>/<class>/*` split into train and val by `val_fraction` and `split_seed`.
    Split,
}

impl std::str::FromStr for Layout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "folders" => Ok(Self::Folders),
            "devkit" => Ok(Self::Devkit),
            "kaggle" => Ok(Self::Kaggle),
            "split" => Ok(Self::Split),
            other => Err(format!(
                "unknown layout {other:?}; expected auto, folders, devkit, kaggle or split"
            )),
        }
    }
}

/// How to open a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetOptions {
    /// The layout, or `Auto`.
    pub layout: Layout,
    /// Fraction of each class held out for validation by the `Split` layout.
    pub val_fraction: f64,
    /// Seed of the `Split` layout's assignment.
    pub split_seed: u64,
}

impl Default for DatasetOptions {
    fn default() -> Self {
        Self {
            layout: Layout::Auto,
            val_fraction: 0.1,
            split_seed: 0,
        }
    }
}

/// A class of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassInfo {
    /// The folder name or WordNet id.
    pub id: String,
    /// Human-readable name (the id itself when nothing better is known).
    pub name: String,
}

#[derive(Debug, Clone)]
struct Entry {
    dir: u32,
    name: Box<str>,
    label: u32,
}

/// An indexed dataset: classes and labelled files, not yet decoded.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The folder the dataset was opened from.
    pub root: PathBuf,
    /// The layout found.
    pub layout: Layout,
    /// Which split this is.
    pub split: Split,
    /// The classes; a label is an index into this list.
    pub classes: Vec<ClassInfo>,
    dirs: Vec<PathBuf>,
    entries: Vec<Entry>,
}

impl Dataset {
    /// Number of files.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the dataset holds no file.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Path of file `index`.
    pub fn path(&self, index: usize) -> PathBuf {
        let entry = &self.entries[index];
        self.dirs[entry.dir as usize].join(&*entry.name)
    }

    /// Label (class index) of file `index`.
    pub fn label(&self, index: usize) -> usize {
        self.entries[index].label as usize
    }

    /// Number of files per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for entry in &self.entries {
            counts[entry.label as usize] += 1;
        }
        counts
    }

    /// A dataset of the given files, for tests and tools that build their own lists.
    pub fn from_files(classes: Vec<ClassInfo>, files: Vec<(PathBuf, usize)>) -> Self {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut dir_index = HashMap::new();
        let entries = files
            .into_iter()
            .map(|(path, label)| {
                let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
                let dir = *dir_index.entry(parent.clone()).or_insert_with(|| {
                    dirs.push(parent);
                    dirs.len() - 1
                });
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                Entry {
                    dir: dir as u32,
                    name: name.unwrap_or_default().into_boxed_str(),
                    label: label as u32,
                }
            })
            .collect();
        Self {
            root: PathBuf::new(),
            layout: Layout::Folders,
            split: Split::Val,
            classes,
            dirs,
            entries,
        }
    }
}

const DEVKIT_GROUND_TRUTH: &str = "ILSVRC2012_validation_ground_truth.txt";
const KAGGLE_SOLUTION: &str = "LOC_val_solution.csv";
const KAGGLE_SYNSETS: &str = "LOC_synset_mapping.txt";

/// Opens `split` of the dataset at `root`.
pub fn open(root: &Path, split: Split, options: &DatasetOptions) -> Result<Dataset, DataError> {
    if !root.is_dir() {
        return Err(DataError::UnknownLayout {
            path: root.to_path_buf(),
            reason: "no such folder".to_string(),
        });
    }
    if !(0.0..1.0).contains(&options.val_fraction) {
        return Err(DataError::InvalidSetting {
            field: "data.val_fraction",
            reason: format!("must be in [0, 1), got {}", options.val_fraction),
        });
    }
    let train_dir = root.join("train");
    let val_dir = root.join("val");
    let has_split_folders = train_dir.is_dir() || val_dir.is_dir();
    let layout = options.layout;
    if layout == Layout::Auto && has_split_folders {
        let split_dir = match split {
            Split::Train => train_dir.clone(),
            Split::Val => val_dir,
        };
        if !split_dir.is_dir() {
            return Err(DataError::UnknownLayout {
                path: root.to_path_buf(),
                reason: format!("it has no {} folder", split_dir.display()),
            });
        }
        let reference = train_dir
            .is_dir()
            .then(|| class_folders(&train_dir))
            .transpose()?;
        let mut dataset = open_flat_or_folders(&split_dir, root, reference)?;
        dataset.root = root.to_path_buf();
        dataset.split = split;
        return Ok(dataset);
    }
    let mut dataset = match layout {
        Layout::Auto | Layout::Split => {
            let folders = class_folders(root)?;
            if folders.is_empty() {
                if layout == Layout::Split {
                    return Err(DataError::UnknownLayout {
                        path: root.to_path_buf(),
                        reason: "the split layout needs class folders".to_string(),
                    });
                }
                open_flat(root, root, None)?
            } else {
                let mut dataset = index_folders(root, &folders, &folders)?;
                dataset.layout = Layout::Split;
                split_by_fraction(&mut dataset, split, options);
                dataset
            }
        }
        Layout::Folders => {
            let folders = class_folders(root)?;
            index_folders(root, &folders, &folders)?
        }
        Layout::Devkit => open_devkit(
            root,
            &devkit_ground_truth(root).ok_or_else(|| DataError::UnknownLayout {
                path: root.to_path_buf(),
                reason: format!("no {DEVKIT_GROUND_TRUTH} in it, its parent or a devkit folder"),
            })?,
        )?,
        Layout::Kaggle => {
            let solution =
                find_upwards(root, KAGGLE_SOLUTION).ok_or_else(|| DataError::UnknownLayout {
                    path: root.to_path_buf(),
                    reason: format!("no {KAGGLE_SOLUTION} in it or the folders above"),
                })?;
            open_kaggle(root, &solution)?
        }
    };
    dataset.root = root.to_path_buf();
    dataset.split = split;
    Ok(dataset)
}

fn open_flat_or_folders(
    dir: &Path,
    root: &Path,
    reference: Option<Vec<String>>,
) -> Result<Dataset, DataError> {
    let folders = class_folders(dir)?;
    if folders.is_empty() {
        return open_flat(dir, root, reference);
    }
    let classes = reference.unwrap_or_else(|| folders.clone());
    index_folders(dir, &folders, &classes)
}

/// A flat folder of images: labelled by the devkit's ground truth or Kaggle's solution.
fn open_flat(
    dir: &Path,
    root: &Path,
    reference: Option<Vec<String>>,
) -> Result<Dataset, DataError> {
    let dataset =
        if let Some(truth) = devkit_ground_truth(dir).or_else(|| devkit_ground_truth(root)) {
            open_devkit(dir, &truth)?
        } else if let Some(solution) = find_upwards(dir, KAGGLE_SOLUTION) {
            open_kaggle(dir, &solution)?
        } else {
            return Err(DataError::UnknownLayout {
                path: dir.to_path_buf(),
                reason: format!(
                    "it holds no class folders, and no {DEVKIT_GROUND_TRUTH} or {KAGGLE_SOLUTION} \
                 labels its files"
                ),
            });
        };
    if let Some(reference) = reference {
        let ids: Vec<&str> = dataset.classes.iter().map(|c| c.id.as_str()).collect();
        if ids != reference.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(DataError::UnknownLayout {
                path: dir.to_path_buf(),
                reason: format!(
                    "its labels name the {} ImageNet classes but train/ has {} other class \
                     folders",
                    ids.len(),
                    reference.len()
                ),
            });
        }
    }
    Ok(dataset)
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// What [`list`] returns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Entries {
    Folders,
    Files,
}

/// Sorted names of the folders or regular files of `dir`, hidden ones left out. Listing
/// only: the entry type comes with the listing, and only symlinks are followed.
fn list(dir: &Path, wanted: Entries) -> Result<Vec<String>, DataError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_hidden(&name) {
            continue;
        }
        let file_type = entry.file_type().map_err(io_error(entry.path()))?;
        let kind = if file_type.is_symlink() {
            let target = entry.path();
            (target.is_dir(), target.is_file())
        } else {
            (file_type.is_dir(), file_type.is_file())
        };
        let keep = match wanted {
            Entries::Folders => kind.0,
            Entries::Files => kind.1,
        };
        if keep {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn class_folders(dir: &Path) -> Result<Vec<String>, DataError> {
    list(dir, Entries::Folders)
}

fn files_in(dir: &Path) -> Result<Vec<String>, DataError> {
    list(dir, Entries::Files)
}

fn class_infos(ids: &[String], names: Option<&HashMap<String, String>>) -> Vec<ClassInfo> {
    ids.iter()
        .map(|id| {
            let name = names
                .and_then(|names| names.get(id).cloned())
                .or_else(|| imagenet_class(id).map(|c| c.name.to_string()))
                .unwrap_or_else(|| id.clone());
            ClassInfo {
                id: id.clone(),
                name,
            }
        })
        .collect()
}

/// `dir/<folder>/*` for each of `folders`, labelled by the folder's position in `classes`.
fn index_folders(dir: &Path, folders: &[String], classes: &[String]) -> Result<Dataset, DataError> {
    let class_index: HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let mut dirs = Vec::with_capacity(folders.len());
    let mut entries = Vec::new();
    for folder in folders {
        let path = dir.join(folder);
        let Some(&label) = class_index.get(folder.as_str()) else {
            return Err(DataError::UnknownLayout {
                path,
                reason: "this class folder has no counterpart in train/".to_string(),
            });
        };
        let files = files_in(&path)?;
        if files.is_empty() {
            return Err(DataError::EmptyClass(path));
        }
        let dir_index = dirs.len() as u32;
        entries.extend(files.into_iter().map(|name| Entry {
            dir: dir_index,
            name: name.into_boxed_str(),
            label: label as u32,
        }));
        dirs.push(path);
    }
    let names = find_upwards(dir, KAGGLE_SYNSETS)
        .map(|path| read_synset_mapping(&path))
        .transpose()?;
    Ok(Dataset {
        root: dir.to_path_buf(),
        layout: Layout::Folders,
        split: Split::Train,
        classes: class_infos(classes, names.as_ref().map(|(_, names)| names)),
        dirs,
        entries,
    })
}

fn split_by_fraction(dataset: &mut Dataset, split: Split, options: &DatasetOptions) {
    let threshold = (options.val_fraction * u64::MAX as f64) as u64;
    let dirs = &dataset.dirs;
    dataset.entries.retain(|entry| {
        let folder = dirs[entry.dir as usize].file_name().unwrap_or_default();
        let key = format!("{}/{}", folder.to_string_lossy(), entry.name);
        let in_val = hash_bytes(options.split_seed, key.as_bytes()) < threshold;
        in_val == (split == Split::Val)
    });
}

fn devkit_ground_truth(dir: &Path) -> Option<PathBuf> {
    let parent = dir.parent().unwrap_or(dir);
    [
        dir.join(DEVKIT_GROUND_TRUTH),
        parent.join(DEVKIT_GROUND_TRUTH),
        parent
            .join("ILSVRC2012_devkit_t12/data")
            .join(DEVKIT_GROUND_TRUTH),
        dir.join("ILSVRC2012_devkit_t12/data")
            .join(DEVKIT_GROUND_TRUTH),
        parent.join("devkit/data").join(DEVKIT_GROUND_TRUTH),
    ]
    .into_iter()
    .find(|path| path.is_file())
}

/// `name` in `dir` or up to three folders above it (Kaggle keeps its CSVs at the top of
/// `ILSVRC/Data/CLS-LOC/val`).
fn find_upwards(dir: &Path, name: &str) -> Option<PathBuf> {
    dir.ancestors()
        .take(5)
        .map(|folder| folder.join(name))
        .find(|path| path.is_file())
}

fn read_text(path: &Path) -> Result<String, DataError> {
    fs::read_to_string(path).map_err(io_error(path))
}

fn label_error(path: &Path, line: usize, reason: impl Into<String>) -> DataError {
    DataError::LabelFile {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

/// The 1000 ImageNet classes, as class infos, with names from `names` when given.
fn imagenet_class_infos(names: Option<&HashMap<String, String>>) -> Vec<ClassInfo> {
    let ids: Vec<String> = imagenet_classes()
        .iter()
        .map(|c| c.wnid.to_string())
        .collect();
    class_infos(&ids, names)
}

/// Builds a flat dataset from `labels` (file name -> class index), requiring that the
/// folder's files and the labelled names are the same set.
fn flat_dataset(
    dir: &Path,
    label_file: &Path,
    labels: HashMap<String, usize>,
    classes: Vec<ClassInfo>,
    layout: Layout,
) -> Result<Dataset, DataError> {
    let files = files_in(dir)?;
    let images: Vec<String> = files
        .into_iter()
        .filter(|name| !name.ends_with(".txt") && !name.ends_with(".csv"))
        .collect();
    let mut entries = Vec::with_capacity(images.len());
    for name in &images {
        let Some(&label) = labels.get(name) else {
            return Err(label_error(
                label_file,
                0,
                format!("has no label for {}", dir.join(name).display()),
            ));
        };
        entries.push(Entry {
            dir: 0,
            name: name.clone().into_boxed_str(),
            label: label as u32,
        });
    }
    if entries.len() != labels.len() {
        let present: std::collections::HashSet<&str> = images.iter().map(String::as_str).collect();
        let mut missing: Vec<&String> = labels
            .keys()
            .filter(|name| !present.contains(name.as_str()))
            .collect();
        missing.sort();
        return Err(label_error(
            label_file,
            0,
            format!(
                "labels {} images but {} holds {} of them; first missing: {}",
                labels.len(),
                dir.display(),
                entries.len(),
                missing.first().map_or("?", |s| s.as_str())
            ),
        ));
    }
    Ok(Dataset {
        root: dir.to_path_buf(),
        layout,
        split: Split::Val,
        classes,
        dirs: vec![dir.to_path_buf()],
        entries,
    })
}

/// The devkit's flat validation folder: line `i` of the ground truth is the ILSVRC2012_ID of
/// `ILSVRC2012_val_{i:08}.JPEG`.
fn open_devkit(dir: &Path, truth: &Path) -> Result<Dataset, DataError> {
    let text = read_text(truth)?;
    let mut labels = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let value = line.trim();
        if value.is_empty() {
            continue;
        }
        let id: u16 = value.parse().map_err(|_| {
            label_error(
                truth,
                line_number,
                format!("expected an ILSVRC2012_ID, got {value:?}"),
            )
        })?;
        let class = class_index_of_ilsvrc2012_id(id).ok_or_else(|| {
            label_error(
                truth,
                line_number,
                format!("ILSVRC2012_ID {id} is not in 1..=1000"),
            )
        })?;
        labels.insert(format!("ILSVRC2012_val_{line_number:08}.JPEG"), class);
    }
    let names = find_upwards(dir, KAGGLE_SYNSETS)
        .map(|path| read_synset_mapping(&path))
        .transpose()?;
    let classes = imagenet_class_infos(names.as_ref().map(|(_, names)| names));
    flat_dataset(dir, truth, labels, classes, Layout::Devkit)
}

/// `LOC_synset_mapping.txt`: `n01440764 tench, Tinca tinca` per line. Returns the wnids in
/// file order and their names.
fn read_synset_mapping(path: &Path) -> Result<(Vec<String>, HashMap<String, String>), DataError> {
    let text = read_text(path)?;
    let mut order = Vec::new();
    let mut names = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (wnid, name) = line.split_once(' ').unwrap_or((line, line));
        if !wnid.starts_with('n') {
            return Err(label_error(
                path,
                index + 1,
                format!("expected a WordNet id, got {wnid:?}"),
            ));
        }
        order.push(wnid.to_string());
        names.insert(wnid.to_string(), name.trim().to_string());
    }
    Ok((order, names))
}

/// Kaggle's flat validation folder: `LOC_val_solution.csv` rows `ImageId,PredictionString`
/// whose first token is the wnid; classes from `LOC_synset_mapping.txt` when present.
fn open_kaggle(dir: &Path, solution: &Path) -> Result<Dataset, DataError> {
    let mapping = solution
        .parent()
        .map(|folder| folder.join(KAGGLE_SYNSETS))
        .filter(|path| path.is_file())
        .or_else(|| find_upwards(dir, KAGGLE_SYNSETS));
    let (classes, names) = match mapping {
        Some(path) => {
            let (mut order, names) = read_synset_mapping(&path)?;
            order.sort();
            (order, Some(names))
        }
        None => (
            imagenet_classes()
                .iter()
                .map(|c| c.wnid.to_string())
                .collect(),
            None,
        ),
    };
    let class_index: HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let text = read_text(solution)?;
    let mut labels = HashMap::new();
    for (index, line) in text.lines().enumerate().skip(1) {
        let line_number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let (image_id, prediction) = line.split_once(',').ok_or_else(|| {
            label_error(solution, line_number, "expected `ImageId,PredictionString`")
        })?;
        let wnid = prediction.split_whitespace().next().unwrap_or("");
        let &class = class_index
            .get(wnid)
            .ok_or_else(|| label_error(solution, line_number, format!("unknown class {wnid:?}")))?;
        labels.insert(format!("{}.JPEG", image_id.trim()), class);
    }
    let infos = class_infos(&classes, names.as_ref());
    flat_dataset(dir, solution, labels, infos, Layout::Kaggle)
}
