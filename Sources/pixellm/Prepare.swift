import ArgumentParser
import Foundation
import PixelData
import PixelDistributed
import PixelText

/// `pixellm prepare`: packs dataset samples into HDF5 shards (docs/shards.md); resumable, multi-process under mpirun.
struct Prepare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Pack a dataset tree into HDF5 shards (preprocessed images, RLE masks, token ids and labels, provenance).",
        discussion: "Resumable: run it again on the same --out to pack only the missing shards. Under mpirun each rank packs shards k with k % world == rank. Bad samples are skipped, logged in OUT/skipped.log and counted (--strict: the first one is an error).")

    @Option(name: [.customLong("dataset-dir"), .customLong("dataset_dir")], help: "The reference's dataset/ root.")
    var datasetDir: String
    @Option(help: "Dataset kinds, '||'-separated: sem_seg, refer_seg, vqa, multi_reason_seg, reason_seg.")
    var dataset = "sem_seg||refer_seg||vqa||multi_reason_seg"
    @Option(name: [.customLong("sem-seg-data"), .customLong("sem_seg_data")], help: "sem_seg sub-datasets.")
    var semSegData = DatasetRegistry.defaultSemSegData
    @Option(name: [.customLong("refer-seg-data"), .customLong("refer_seg_data")], help: "refer_seg sub-datasets.")
    var referSegData = DatasetRegistry.defaultReferSegData
    @Option(name: [.customLong("vqa-data"), .customLong("vqa_data")], help: "VQA json name(s) under llava_dataset/.")
    var vqaData = DatasetRegistry.defaultVQAData
    @Option(name: [.customLong("multi-reason-seg-data"), .customLong("multi_reason_seg_data")], help: "MUSE split(s): train, val, test_less, test_many.")
    var multiReasonSegData = DatasetRegistry.defaultMultiReasonSegData
    @Option(name: [.customLong("reason-seg-data"), .customLong("reason_seg_data")], help: "ReasonSeg|<split>[_<split>].")
    var reasonSegData = DatasetRegistry.defaultReasonSegData
    @Option(help: "Output directory of the shards.") var out: String
    @Option(help: "Tokenizer directory (default: <dataset-dir>/tokenizer when it exists).") var tokenizer: String?
    @Option(name: [.customLong("image-size"), .customLong("image_size")], help: "CLIP-branch size S (longest side resized to S, zero padded to S x S).")
    var imageSize = 448
    @Option(name: [.customLong("shard-size"), .customLong("shard_size")], help: "Work-plan items per shard.") var shardSize = 512
    @Option(help: "Seed of the readers' template and target draws.") var seed: UInt64 = 0
    @Option(name: [.customLong("model-max-length"), .customLong("model_max_length")], help: "model_max_length (recorded; ids are stored untruncated).")
    var modelMaxLength = 512
    @Option(name: [.customLong("num-classes-per-sample"), .customLong("num_classes_per_sample")]) var numClassesPerSample = 3
    @Option(name: [.customLong("num-classes-per-question"), .customLong("num_classes_per_question")]) var numClassesPerQuestion = 3
    @Flag(name: [.customLong("no-expand-question-list"), .customLong("no_expand_question_list")], help: "Do not use the expanded question templates.")
    var noExpandQuestionList = false
    @Option(help: "At most N items per sub-dataset (smoke runs).") var limit: Int?
    @Option(help: "Deflate level 0-9 of the stored images (0: none). Level 1 costs ~1.5 ms per 448 px sample to read and removes at least the zero padding.")
    var compression = 1
    @Flag(help: "The first bad sample (or missing sub-dataset) is an error.") var strict = false
    @Flag(help: "Replace shards written with other options.") var overwrite = false

    func validate() throws {
        if imageSize < 1 || imageSize > 4096 { throw ValidationError("--image-size must be in 1...4096") }
        if shardSize < 1 { throw ValidationError("--shard-size must be >= 1") }
        if compression < 0 || compression > 9 { throw ValidationError("--compression must be in 0...9") }
        if let l = limit, l < 0 { throw ValidationError("--limit must be >= 0") }
    }

    func run() throws {
        let comm = Communicators.make()
        let tag = comm.size > 1 ? "rank \(comm.rank)/\(comm.size): " : ""
        func fail(_ e: Error) -> Never {
            if comm.size > 1 { comm.abort(message: "prepare: \(e)") }
            FileHandle.standardError.write(Data("error: \(e)\n".utf8))
            Foundation.exit(1)
        }
        do {
            // absolute, so that readers that prefix their image paths with the dataset directory give paths that
            // do not depend on the working directory (a relative image path is taken relative to this directory)
            let datasetDir = URL(fileURLWithPath: self.datasetDir).standardizedFileURL.path
            let tokDir: String
            if let t = tokenizer { tokDir = t } else {
                let d = (datasetDir as NSString).appendingPathComponent("tokenizer")
                guard FileManager.default.fileExists(atPath: d) else {
                    throw ShardError(file: d, "no --tokenizer given and this directory does not exist: pass --tokenizer DIR (a LLaVA/PixelLM tokenizer directory)")
                }
                tokDir = d
            }
            let tok = try Tokenizer(directory: tokDir)
            try tok.requirePixelLMTokens(segTokenCount: 6)
            var opts = PrepareOptions()
            opts.imageSize = imageSize
            opts.shardSize = shardSize
            opts.compression = compression
            opts.seed = seed
            opts.modelMaxLength = modelMaxLength
            opts.limit = limit
            opts.datasetDir = datasetDir
            opts.tokenizerPath = tokDir
            opts.tokenizerHash = try PrepareOptions.tokenizerFingerprint(directory: tokDir)
            opts.reader.numClassesPerSample = numClassesPerSample
            opts.reader.numClassesPerQuestion = numClassesPerQuestion
            opts.reader.useExpandQuestionList = !noExpandQuestionList
            opts.datasetSpec = "dataset=\(dataset) sem_seg_data=\(semSegData) refer_seg_data=\(referSegData) vqa_data=\(vqaData) "
                + "multi_reason_seg_data=\(multiReasonSegData) reason_seg_data=\(reasonSegData)"
            let readers = try DatasetRegistry.readers(
                datasetDir: datasetDir, dataset: dataset, semSegData: semSegData, referSegData: referSegData, vqaData: vqaData,
                multiReasonSegData: multiReasonSegData, reasonSegData: reasonSegData, options: opts.reader, strict: strict,
                warn: { if comm.rank == 0 { FileHandle.standardError.write(Data("warning: \($0)\n".utf8)) } })
            let job = PrepareJob(readers: readers, tokenizer: tok, options: opts, outDir: out, datasetDir: datasetDir,
                                 strict: strict, overwrite: overwrite)
            job.log = { FileHandle.standardError.write(Data((tag + $0 + "\n").utf8)) }
            if comm.rank == 0 {
                let subsets = zip(readers, job.plan.counts).map { "\($0.subset) \($1)" }.joined(separator: ", ")
                FileHandle.standardError.write(Data("prepare: \(job.plan.total) items (\(subsets)) in \(job.plan.shardCount) shards of \(shardSize), \(comm.size) rank(s) -> \(out)\n".utf8))
            }
            let bar = ProgressBar(label: tag.isEmpty ? "prepare" : "\(tag)prepare", isTTY: isatty(2) != 0 && comm.size == 1)
            let summary = try job.run(rank: comm.rank, worldSize: comm.size, barrier: { comm.barrier() },
                                      progress: { bar.update(done: $0, total: $1, skipped: $2) })
            if comm.size > 1 {
                FileHandle.standardError.write(Data("\(tag)packed \(summary.shardsPacked) shard(s), kept \(summary.shardsKept), \(summary.itemsPacked) items, \(summary.skips.count) skipped\n".utf8))
            }
            if let m = summary.manifest {
                print("shards: \(m.shards.count) (\(comm.size == 1 ? "packed \(summary.shardsPacked), kept \(summary.shardsKept) from an earlier run" : "\(comm.size) ranks")) in \(out)")
                for s in m.subsets {
                    print("  \(s.dataset)/\(s.subset): \(s.items) items, \(s.samples) samples, \(s.skipped) skipped\(s.indexSkipped > 0 ? ", \(s.indexSkipped) dropped while indexing" : "")")
                }
                print("samples: \(m.totalSamples) of \(m.totalItems) items; skipped: \(m.totalSkipped)\(m.totalSkipped > 0 ? " (see \((out as NSString).appendingPathComponent(ShardFormat.skipLogName)))" : "")")
                for (r, c) in m.skipsByReason.sorted(by: { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }) {
                    print("  \(c)  \(r)")
                }
            }
        } catch {
            fail(error)
        }
    }
}
