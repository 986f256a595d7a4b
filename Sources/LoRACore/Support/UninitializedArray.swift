extension Array where Element: BitwiseCopyable {
    /// `count` elements left uninitialized, for scratch buffers that are filled before they are
    /// read: zeroing a 512 KiB buffer per chunk segment costs as much as a kernel pass over it.
    init(uninitializedCount count: Int) {
        self.init(unsafeUninitializedCapacity: count) { _, initialized in initialized = count }
    }
}
