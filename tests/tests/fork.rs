//! `OsRandom` after `fork()`: a child never hands out the bytes its parent will.

use datalayer_core::Random;
use datalayer_tokio::OsRandom;

#[test]
#[allow(unsafe_code)]
fn a_forked_child_draws_other_bytes_than_its_parent() {
    // The parent's pool is filled (and bytes of it are left) before the fork.
    let mut warm = [0u8; 8];
    OsRandom.fill_bytes(&mut warm);
    let mut fds = [0i32; 2];
    let mut child_bytes = [0u8; 32];
    // SAFETY: pipe() and fork() with valid arguments; the child only draws from OsRandom
    // (no allocation: the pool is a thread-local array), writes to the pipe and _exits.
    let pid = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0, "pipe");
        libc::fork()
    };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let mut mine = [0u8; 32];
        OsRandom.fill_bytes(&mut mine);
        // SAFETY: writing a stack buffer to the pipe's write end, then leaving at once.
        unsafe {
            libc::write(fds[1], mine.as_ptr().cast(), mine.len());
            libc::_exit(0);
        }
    }
    let mut parent_bytes = [0u8; 32];
    OsRandom.fill_bytes(&mut parent_bytes);
    // SAFETY: reading into a stack buffer from the pipe's read end; waiting for the child.
    let read = unsafe {
        libc::close(fds[1]);
        let n = libc::read(fds[0], child_bytes.as_mut_ptr().cast(), child_bytes.len());
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        libc::close(fds[0]);
        n
    };
    assert_eq!(read, 32, "the child's bytes");
    assert_ne!(
        child_bytes, parent_bytes,
        "the child drew the bytes its parent drew next (its pool was inherited)"
    );
    assert_ne!(child_bytes, [0u8; 32]);
}
