import FuzzTargets

/// libFuzzer entry point; built only by scripts/fuzz (LORA_TOOL_FUZZ=1, -sanitize=fuzzer,address).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    FuzzTargets.safetensors(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
