import CFiles

/// Early writeback of a file written through the page cache.
///
/// A file written with plain `pwrite` sits in the page cache until the kernel flushes it; an fsync
/// at the end then waits for the disk to take all of it at once, after the work is done. Starting
/// the writeback of each written range as the file grows keeps the disk busy while the rest is
/// computed, so the final fsync waits only for the last ranges. Durability still comes from fsync.
public enum Writeback {
    /// Starts writing bytes `offset..<offset + count` of `fd` to the disk, without waiting (Linux
    /// `sync_file_range(SYNC_FILE_RANGE_WRITE)`; nothing where the system lacks it). Failures are
    /// ignored: the final fsync reports what matters.
    public static func start(_ fd: Int32, offset: Int, count: Int) {
        _ = lora_start_writeback(fd, Int64(offset), Int64(count))
    }
}
