//! Every supported dataset layout, built on disk from tiny images.

use std::fs;
use std::path::Path;

use image::{ImageBuffer, Rgb};
use xception_data::classes::imagenet_classes;
use xception_data::{DataError, DatasetOptions, Layout, Split, open};

fn write_image(path: &Path) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let image = ImageBuffer::from_fn(8, 6, |x, y| Rgb([x as u8 * 30, y as u8 * 40, 90]));
    image
        .save_with_format(path, image::ImageFormat::Png)
        .expect("write image");
}

fn auto() -> DatasetOptions {
    DatasetOptions::default()
}

#[test]
fn train_and_val_class_folders_share_the_train_class_indices() {
    let dir = tempfile::tempdir().expect("temp dir");
    for class in ["ant", "bee", "cat"] {
        for i in 0..3 {
            write_image(&dir.path().join(format!("train/{class}/{i}.png")));
        }
    }
    write_image(&dir.path().join("train/bee/.hidden.png"));
    for class in ["ant", "cat"] {
        write_image(&dir.path().join(format!("val/{class}/x.png")));
    }
    let train = open(dir.path(), Split::Train, &auto()).expect("train opens");
    assert_eq!(train.len(), 9, "hidden files are not samples");
    assert_eq!(train.class_counts(), vec![3, 3, 3]);
    let val = open(dir.path(), Split::Val, &auto()).expect("val opens");
    assert_eq!(val.classes.len(), 3);
    let labels: Vec<usize> = (0..val.len()).map(|i| val.label(i)).collect();
    assert_eq!(labels, vec![0, 2], "cat keeps train's index 2");
    assert!(val.path(1).ends_with("val/cat/x.png"));
}

#[test]
fn val_class_unknown_to_train_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_image(&dir.path().join("train/ant/0.png"));
    write_image(&dir.path().join("val/dog/0.png"));
    let error = open(dir.path(), Split::Val, &auto()).expect_err("dog is unknown");
    assert!(error.to_string().contains("val/dog"), "{error}");
}

#[test]
fn empty_class_folder_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_image(&dir.path().join("train/ant/0.png"));
    fs::create_dir_all(dir.path().join("train/bee")).expect("mkdir");
    let error = open(dir.path(), Split::Train, &auto()).expect_err("bee is empty");
    assert!(matches!(error, DataError::EmptyClass(ref p) if p.ends_with("train/bee")));
}

#[test]
fn folders_named_by_wnid_get_imagenet_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_image(&dir.path().join("train/n01440764/a.JPEG"));
    write_image(&dir.path().join("train/n01751748/b.JPEG"));
    let train = open(dir.path(), Split::Train, &auto()).expect("opens");
    assert!(train.classes[0].name.starts_with("tench"));
    assert!(train.classes[1].name.contains("sea snake"));
}

fn devkit_val(root: &Path, files: usize) {
    for i in 1..=files {
        write_image(&root.join(format!("val/ILSVRC2012_val_{i:08}.JPEG")));
    }
}

#[test]
fn devkit_ground_truth_ids_are_remapped_to_sorted_wnids() {
    let dir = tempfile::tempdir().expect("temp dir");
    devkit_val(dir.path(), 3);
    let truth = dir
        .path()
        .join("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt");
    fs::create_dir_all(truth.parent().expect("parent")).expect("mkdir");
    fs::write(&truth, "490\n1\n1000\n").expect("write");
    let val = open(dir.path(), Split::Val, &auto()).expect("opens");
    assert_eq!(val.layout, Layout::Devkit);
    assert_eq!(val.classes.len(), 1000);
    let wnids: Vec<&str> = (0..3)
        .map(|i| imagenet_classes()[val.label(i)].wnid)
        .collect();
    assert_eq!(wnids, ["n01751748", "n02119789", "n03255030"]);
    assert_eq!(val.label(0), 65);
    assert!(val.classes[65].name.contains("sea snake"));

    // The flat folder given directly, with the ground truth beside it, opens the same way.
    let direct = DatasetOptions {
        layout: Layout::Devkit,
        ..auto()
    };
    fs::copy(
        &truth,
        dir.path()
            .join("val/ILSVRC2012_validation_ground_truth.txt"),
    )
    .expect("cp");
    let again = open(&dir.path().join("val"), Split::Val, &direct).expect("opens");
    assert_eq!(again.label(2), val.label(2));
}

#[test]
fn devkit_ground_truth_that_does_not_match_the_files_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    devkit_val(dir.path(), 3);
    let truth = dir.path().join("ILSVRC2012_validation_ground_truth.txt");
    fs::write(&truth, "490\n1\n1000\n7\n").expect("write");
    let error = open(dir.path(), Split::Val, &auto()).expect_err("a file is missing");
    let message = error.to_string();
    assert!(
        message.contains("ILSVRC2012_val_00000004.JPEG"),
        "{message}"
    );
    assert!(
        message.contains("ILSVRC2012_validation_ground_truth.txt"),
        "{message}"
    );

    fs::write(&truth, "490\n1\n").expect("write");
    let error = open(dir.path(), Split::Val, &auto()).expect_err("a label is missing");
    assert!(
        error.to_string().contains("ILSVRC2012_val_00000003.JPEG"),
        "{error}"
    );

    fs::write(&truth, "490\nfox\n1000\n").expect("write");
    let error = open(dir.path(), Split::Val, &auto()).expect_err("not a number");
    assert!(error.to_string().contains(":2:"), "{error}");
}

#[test]
fn kaggle_solution_csv_labels_the_flat_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Kaggle: ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/ flat}, CSVs at the top.
    let val = dir.path().join("ILSVRC/Data/CLS-LOC");
    devkit_val(&val, 2);
    write_image(&val.join("train/n01440764/a.JPEG"));
    write_image(&val.join("train/n01751748/b.JPEG"));
    write_image(&val.join("train/n02119789/c.JPEG"));
    fs::write(
        dir.path().join("LOC_val_solution.csv"),
        "ImageId,PredictionString\n\
         ILSVRC2012_val_00000002,n02119789 1 2 3 4 n02119789 5 6 7 8\n\
         ILSVRC2012_val_00000001,n01751748 10 20 30 40\n",
    )
    .expect("write");
    fs::write(
        dir.path().join("LOC_synset_mapping.txt"),
        "n02119789 kit fox, Vulpes macrotis\nn01440764 tench, Tinca tinca\n\
         n01751748 sea snake\n",
    )
    .expect("write");
    let dataset = open(&val, Split::Val, &auto()).expect("opens");
    assert_eq!(dataset.layout, Layout::Kaggle);
    let ids: Vec<&str> = dataset.classes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["n01440764", "n01751748", "n02119789"]);
    assert_eq!(dataset.classes[2].name, "kit fox, Vulpes macrotis");
    assert_eq!((dataset.label(0), dataset.label(1)), (1, 2));

    let train = open(&val, Split::Train, &auto()).expect("train opens");
    assert_eq!(
        train.classes[0].name, "tench, Tinca tinca",
        "names from the mapping"
    );

    fs::write(
        dir.path().join("LOC_val_solution.csv"),
        "ImageId,PredictionString\nILSVRC2012_val_00000001,n99999999 1 2 3 4\n",
    )
    .expect("write");
    let error = open(&val, Split::Val, &auto()).expect_err("unknown class");
    assert!(
        error.to_string().contains("LOC_val_solution.csv:2"),
        "{error}"
    );
}

#[test]
fn a_single_folder_is_split_by_a_seeded_fraction() {
    let dir = tempfile::tempdir().expect("temp dir");
    for class in ["a", "b"] {
        for i in 0..100 {
            write_image(&dir.path().join(format!("{class}/{i:03}.png")));
        }
    }
    let options = DatasetOptions {
        val_fraction: 0.2,
        split_seed: 1,
        ..auto()
    };
    let train = open(dir.path(), Split::Train, &options).expect("opens");
    let val = open(dir.path(), Split::Val, &options).expect("opens");
    assert_eq!(train.layout, Layout::Split);
    assert_eq!(train.len() + val.len(), 200);
    assert!((25..=55).contains(&val.len()), "{}", val.len());
    let train_paths: std::collections::HashSet<_> =
        (0..train.len()).map(|i| train.path(i)).collect();
    assert!((0..val.len()).all(|i| !train_paths.contains(&val.path(i))));
    let again = open(dir.path(), Split::Val, &options).expect("opens");
    assert_eq!(
        (0..val.len()).map(|i| val.path(i)).collect::<Vec<_>>(),
        (0..again.len()).map(|i| again.path(i)).collect::<Vec<_>>()
    );
    let reseeded = DatasetOptions {
        split_seed: 2,
        ..options.clone()
    };
    let other = open(dir.path(), Split::Val, &reseeded).expect("opens");
    assert_ne!(
        (0..val.len()).map(|i| val.path(i)).collect::<Vec<_>>(),
        (0..other.len()).map(|i| other.path(i)).collect::<Vec<_>>()
    );

    let whole = DatasetOptions {
        layout: Layout::Folders,
        ..options
    };
    assert_eq!(
        open(dir.path(), Split::Val, &whole).expect("opens").len(),
        200
    );
}

#[test]
fn folders_that_are_no_dataset_are_clear_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = open(&dir.path().join("nope"), Split::Train, &auto()).expect_err("missing");
    assert!(missing.to_string().contains("nope"), "{missing}");
    write_image(&dir.path().join("loose.png"));
    let flat = open(dir.path(), Split::Val, &auto()).expect_err("flat without labels");
    assert!(
        flat.to_string()
            .contains("ILSVRC2012_validation_ground_truth.txt"),
        "{flat}"
    );
    let bad_fraction = DatasetOptions {
        val_fraction: 1.5,
        ..auto()
    };
    let error = open(dir.path(), Split::Val, &bad_fraction).expect_err("bad fraction");
    assert!(error.to_string().contains("data.val_fraction"), "{error}");
}
