import Foundation
import SafeTensors

/// Refuses outputs that would overwrite or nest with inputs, before any work is done.
enum PathSafety {
    /// - Throws: `LoRACoreError.invalidRequest` when `output` equals, is inside, or contains an input.
    static func checkOutput(_ output: String, inputs: [String]) throws {
        let out = OutputPath.realPath(output)
        for input in inputs {
            let inp = OutputPath.realPath(input)
            if out == inp {
                throw LoRACoreError.invalidRequest("output \(output) is the input \(input); inputs are never modified")
            }
            if out.hasPrefix(inp + "/") {
                throw LoRACoreError.invalidRequest("output \(output) is inside the input \(input)")
            }
            if inp.hasPrefix(out + "/") {
                throw LoRACoreError.invalidRequest("output \(output) contains the input \(input)")
            }
        }
    }
}
