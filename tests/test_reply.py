"""The reply bridge from shard threads to asyncio: a reply is awaited as a
future (tasks, wait_for, gather), and its waiter goes on in the loop pass that
received the answer, not one pass later."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cascade.engine.reply import Reply, resolve_batch


def _answer_from_a_thread(reply: Reply, value: object = None, error: BaseException | None = None) -> None:
    def work() -> None:
        if error is not None:
            reply.set_error(error)
        else:
            reply.set(value)
        resolve_batch([reply])
    t = threading.Thread(target=work)
    t.start()
    t.join()


def test_a_task_awaiting_a_reply_gets_the_shards_answer() -> None:
    async def main() -> object:
        reply = Reply.here()
        assert asyncio.isfuture(reply) and not reply.done()
        threading.Timer(0.01, _answer_from_a_thread, (reply, {"accepted": 1})).start()
        return await reply

    assert asyncio.run(main()) == {"accepted": 1}


def test_an_error_set_by_the_shard_is_raised_in_the_waiter() -> None:
    async def main() -> None:
        reply = Reply.here()
        _answer_from_a_thread(reply, error=KeyError("snd_x"))
        with pytest.raises(KeyError):
            await reply

    asyncio.run(main())


def test_the_waiter_goes_on_in_the_pass_that_received_the_answer() -> None:
    """An asyncio.Future would resume its waiter one pass later, after
    `marker`, which was scheduled after the answer landed."""
    async def main() -> list[str]:
        order: list[str] = []
        reply = Reply.here()

        async def waiter() -> None:
            await reply
            order.append("waiter")

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)  # the waiter now hangs on the reply
        reply.set(1)
        resolve_batch([reply])  # the answer lands on the loop's next pass...
        asyncio.get_running_loop().call_soon(order.append, "marker")  # ...ahead of this
        await task
        return order

    assert asyncio.run(main()) == ["waiter", "marker"]


def test_wait_for_gives_up_and_a_late_answer_goes_nowhere() -> None:
    async def main() -> None:
        reply = Reply.here()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reply, 0.01)
        assert reply.cancelled()
        _answer_from_a_thread(reply, "late")
        landed = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(landed.set_result, None)  # runs after the answer's callback
        await landed
        assert reply.cancelled()
        with pytest.raises(asyncio.CancelledError):
            reply.result()

    asyncio.run(main())


def test_gather_takes_replies_as_they_are() -> None:
    async def main() -> list[object]:
        a, b = Reply.here(), Reply.here()
        threading.Timer(0.01, _answer_from_a_thread, (b, "b")).start()
        threading.Timer(0.02, _answer_from_a_thread, (a, "a")).start()
        return await asyncio.gather(a, b)

    assert asyncio.run(main()) == ["a", "b"]


def test_cancelling_the_awaiting_task_leaves_the_reply_cancelled() -> None:
    async def main() -> None:
        reply = Reply.here()
        task = asyncio.ensure_future(_await(reply))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert reply.cancelled()

    asyncio.run(main())


async def _await(reply: Reply) -> object:
    return await reply


def test_a_blocking_reply_is_waited_on_and_is_no_future() -> None:
    reply = Reply.here()  # no loop runs here
    assert not asyncio.isfuture(reply)
    threading.Timer(0.01, _answer_from_a_thread, (reply, 7)).start()
    assert reply.wait(5) == 7
    with pytest.raises(RuntimeError):
        next(reply.__await__())  # (a generator: it raises when first run)
