import Foundation
import PixelData
import PixelDistributed
import PixelText

/// `train --dataset-dir TREE` with a dataset tree (the reference's dataset/ layout) instead of prepared shards:
/// the tree is packed first, by every rank, into RUN/shards with `prepare`'s defaults (the kinds of --dataset,
/// every default sub-dataset, the tree's tokenizer/ directory, the model's image size, --num-classes-per-question,
/// --model-max-length, --seed). Resumable like `prepare`: a rerun reuses the complete shards.
public enum AutoPrepare {
    /// Whether `dir` looks like a dataset tree (and not like shards).
    public static func isDatasetTree(_ dir: String) -> Bool {
        let fm = FileManager.default
        if fm.fileExists(atPath: (dir as NSString).appendingPathComponent(ShardFormat.manifestName)) { return false }
        return ["muse_train.json", "refer_seg", "ade20k", "llava_dataset", "reason_seg"].contains {
            fm.fileExists(atPath: (dir as NSString).appendingPathComponent($0))
        }
    }

    public static func tokenizerDirectory(tree: String) throws -> String {
        let d = (tree as NSString).appendingPathComponent("tokenizer")
        guard FileManager.default.fileExists(atPath: d) else {
            throw TrainError.file(d, "the dataset tree has no tokenizer/ directory: prepare it with pixellm prepare --tokenizer DIR, then train on the shards")
        }
        return d
    }

    /// Packs `tree` into `out` (collective). Returns `out`.
    @discardableResult
    public static func run(tree: String, out: String, options o: TrainOptions, imageSize: Int, comm: any Communicator,
                           log: @escaping (String) -> Void) throws -> String {
        let datasetDir = URL(fileURLWithPath: tree).standardizedFileURL.path
        let tokDir = try tokenizerDirectory(tree: datasetDir)
        let tok = try Tokenizer(directory: tokDir)
        try tok.requirePixelLMTokens(segTokenCount: o.segTokenNum * o.imageFeatureScaleNum)
        var p = PrepareOptions()
        p.imageSize = imageSize
        p.seed = o.seed
        p.modelMaxLength = o.modelMaxLength
        p.compression = 1
        p.datasetDir = datasetDir
        p.tokenizerPath = tokDir
        p.tokenizerHash = try PrepareOptions.tokenizerFingerprint(directory: tokDir)
        p.reader.numClassesPerQuestion = o.numClassesPerQuestion
        p.datasetSpec = "dataset=\(o.dataset) (train's defaults)"
        let readers = try DatasetRegistry.readers(datasetDir: datasetDir, dataset: o.dataset, options: p.reader,
                                                  warn: { if comm.rank == 0 { log("warning: \($0)") } })
        let job = PrepareJob(readers: readers, tokenizer: tok, options: p, outDir: out, datasetDir: datasetDir,
                             strict: false, overwrite: false)
        if comm.rank == 0 { log("train: \(tree) is a dataset tree: packing \(job.plan.total) items into \(out) (\(imageSize) px, \(comm.size) rank(s))") }
        let summary = try job.run(rank: comm.rank, worldSize: comm.size, barrier: { comm.barrier() }, progress: { _, _, _ in })
        if comm.rank == 0, let m = summary.manifest {
            log("train: \(m.totalSamples) samples in \(m.shards.count) shard(s); \(m.totalSkipped) skipped (see \(out)/\(ShardFormat.skipLogName))")
        }
        comm.barrier()
        return out
    }
}
