import pytest

from django_tasks_shared import wait
from testproject import tasks


@pytest.mark.timeout(60)
def test_enqueue_and_wait_against_tasks_server(server):
    with server.settings():
        result = tasks.add.enqueue(2, 3)
        wait(result, timeout=20)
        assert result.status == "SUCCESSFUL"
        assert result.return_value == 5
        assert tasks.add.get_result(result.id).return_value == 5
