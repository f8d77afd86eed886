using MoErging.Execution.Cpu;

namespace MoErging.Tests;

/// <summary>
/// The CPU worker pool's fork-join: helpers join a job only while it is open, the caller closes it once the helpers
/// inside have left, and late helpers skip it. Many short jobs of seeded random sizes, back to back and after idle gaps
/// longer than a helper's spin, must run every item exactly once, and a failing item must reach the caller.
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
        var job = new CountingJob(64);
        for (int run = 0; run < 3000; run++)
        {
            int count = data.Rng.Next(1, 65);
            job.Reset();
            pool.Run(job, count);
            for (int i = 0; i < 64; i++)
            {
                int expected = i < count ? 1 : 0;
                Assert.True(job.Runs[i] == expected, $"{data}: run {run} of {count} items, {threads} threads: item {i} ran {job.Runs[i]} times");
            }
            if (run % 500 == 0)
            {
                Thread.Sleep(2); // helpers stop spinning and block: the next job wakes them
            }
        }
    }

    [Fact]
    public void AFailingItemReachesTheCallerAndThePoolRunsOn()
    {
        using var pool = new WorkerPool(2);
        var job = new CountingJob(32) { Failing = 17 };
        job.Reset();
        var failure = Assert.Throws<InvalidOperationException>(() => pool.Run(job, 32));
        Assert.Equal("item 17", failure.Message);
        job.Failing = -1;
        job.Reset();
        pool.Run(job, 32);
        Assert.All(job.Runs, runs => Assert.Equal(1, runs));
    }

    private sealed class CountingJob(int capacity) : ParallelJob
    {
        public int[] Runs { get; } = new int[capacity];

        public int Failing { get; set; } = -1;

        public void Reset() => Array.Clear(Runs);

        public override void Execute(int item)
        {
            Interlocked.Increment(ref Runs[item]);
            Thread.SpinWait(50 * (item % 4)); // items of uneven length, so helper and caller interleave
            if (item == Failing)
            {
                throw new InvalidOperationException($"item {item}");
            }
        }
    }
}
