import CFuzzer
import FuzzTargets

/// libFuzzer entry; built only by scripts/fuzz (LORA_TOOL_FUZZ=1, -sanitize=fuzzer,address).
/// SwiftPM links an executable's entry as `<module>_main`, so that symbol hands over to libFuzzer.
@_cdecl("fuzz_image_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var count = argc
    var arguments = argv
    return LLVMFuzzerRunDriver(&count, &arguments) { data, size in
        FuzzTargets.imageLoRA(UnsafeRawBufferPointer(start: data, count: size))
        return 0
    }
}

/// The callback libFuzzer's own `main` looks for, when that is the entry the linker picks.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    FuzzTargets.imageLoRA(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
