//! The tests' scratch folders (tests/common/scratch.rs, shared by every test binary; tested
//! here, in the binary that builds fastest): one per name and process under target/tmp,
//! those of ended processes removed, other folders left alone.

use crate::scratch::scratch_dir;
use std::path::Path;

#[test]
fn scratch_folders_are_per_process_and_those_of_ended_processes_go() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    // The id of a process that has ended (and been reaped): no /proc entry.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let ended_pid = child.id();
    child.wait().unwrap();
    assert!(!Path::new("/proc").join(ended_pid.to_string()).exists());
    let ended = root.join(format!("miad-scratch-{ended_pid}-left-behind"));
    std::fs::create_dir_all(ended.join("sub")).unwrap();
    std::fs::write(ended.join("sub/file"), b"x").unwrap();
    let unrelated = root.join(format!("miad-unrelated-{ended_pid}"));
    std::fs::create_dir_all(&unrelated).unwrap();

    let mine = scratch_dir("scratch-test-a");
    assert_eq!(
        mine.file_name().unwrap().to_str().unwrap(),
        format!("miad-scratch-{}-scratch-test-a", std::process::id())
    );
    assert_eq!(mine.parent().unwrap(), root);
    assert!(
        !ended.exists(),
        "the folder of an ended process is still there"
    );
    assert!(
        unrelated.exists(),
        "a folder that is not a scratch folder was removed"
    );
    std::fs::remove_dir_all(&unrelated).unwrap();

    // Later calls with the name: the same folder, its files kept; another name: another folder.
    std::fs::write(mine.join("kept"), b"y").unwrap();
    assert_eq!(scratch_dir("scratch-test-a"), mine);
    assert!(mine.join("kept").exists());
    let other = scratch_dir("scratch-test-b");
    assert_ne!(other, mine);
    assert!(other.is_dir() && std::fs::read_dir(&other).unwrap().next().is_none());
    // Removed by its test, the folder is made again on the next call.
    std::fs::remove_dir_all(&other).unwrap();
    assert!(scratch_dir("scratch-test-b").is_dir());
    std::fs::remove_dir_all(&mine).unwrap();
    std::fs::remove_dir_all(&other).unwrap();
}
