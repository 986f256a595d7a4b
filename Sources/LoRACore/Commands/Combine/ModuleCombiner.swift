/// One combination method applied to one module: the inputs that have the module in, one
/// rank-q factor pair with scale 1 out.
protocol ModuleCombiner {
    /// - Parameter parts: the adapters that have the module, in command-line order (at least one).
    /// - Throws: `LoRACoreError` when the method cannot combine these inputs (unequal ranks, …).
    func combine(_ parts: [CombinePart], context: CombineContext) throws -> CombinedModule
}
