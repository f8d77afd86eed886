using MoErging.Execution.Cpu;

namespace MoErging.Tests;

/// <summary>
/// The CPU worker pool's fork-join: helpers join a job only while it is open, the caller closes it once the helpers
/// inside have left, and late helpers skip it. Many short jobs of seeded random sizes, back to back and after idle gaps
/// longer than a helper's spin, must run every item exactly once, and an item failing on a helper must reach the caller.
/// </summary>
public sealed class WorkerPoolTests
{
    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void EveryItemOfEveryJobRunsExactlyOnce(int threads)
    {
        var data = new TestData();
        using var pool = new WorkerPool(threads);
        // Two jobs in turn: a helper that ran a closed job's object, or the next one's too early, would count in the wrong one.
        CountingJob[] jobs = [new(64), new(64)];
        for (int run = 0; run < 3000; run++)
        {
            CountingJob job = jobs[run % 2];
            int count = data.Rng.Next(1, 65);
            job.Reset();
            pool.Run(job, count);
            if (run % 500 == 0)
            {
                Thread.Sleep(2); // helpers stop polling and block: the next job wakes them
            }
            foreach (CountingJob checkedJob in jobs)
            {
                for (int i = 0; i < 64; i++)
                {
                    int expected = checkedJob == job && i < count ? 1 : 0;
                    Assert.True(checkedJob.Runs[i] == expected,
                        $"{data}: run {run} of {count} items, {threads} threads: item {i} of job {Array.IndexOf(jobs, checkedJob)} ran {checkedJob.Runs[i]} times");
                }
                checkedJob.Reset();
            }
        }
    }

    [Fact]
    public void AFailureOnAHelperReachesTheCallerAndThePoolRunsOn()
    {
        using var pool = new WorkerPool(2);
        int caller = Environment.CurrentManagedThreadId;
        var job = new CountingJob(32) { FailOffThread = caller };
        // Which thread takes which item is up to the pool: run until a helper has taken one (it does within a few runs).
        InvalidOperationException? failure = null;
        for (int run = 0; run < 1000 && failure is null; run++)
        {
            job.Reset();
            try
            {
                pool.Run(job, 32);
            }
            catch (InvalidOperationException e)
            {
                failure = e;
            }
        }
        Assert.NotNull(failure);
        Assert.StartsWith("item ", failure.Message);
        job.FailOffThread = null;
        job.Reset();
        pool.Run(job, 32);
        Assert.All(job.Runs, runs => Assert.Equal(1, runs));
    }

    private sealed class CountingJob(int capacity) : ParallelJob
    {
        public int[] Runs { get; } = new int[capacity];

        /// <summary>When set, an item run on any other thread than this one throws.</summary>
        public int? FailOffThread { get; set; }

        public void Reset() => Array.Clear(Runs);

        public override void Execute(int item)
        {
            Interlocked.Increment(ref Runs[item]);
            Thread.SpinWait(50 * (item % 4)); // items of uneven length, so helper and caller interleave
            if (FailOffThread is int caller && Environment.CurrentManagedThreadId != caller)
            {
                throw new InvalidOperationException($"item {item}");
            }
        }
    }
}
