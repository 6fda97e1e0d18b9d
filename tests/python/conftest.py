"""Fixtures shared by the tests against a real shmschedd in this directory."""
import os
import subprocess
import uuid

import pytest


@pytest.fixture()
def local_user():
    """A throwaway account in no group, as another local user of the host would be."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a throwaway user")
    name = "shmsched-t-" + uuid.uuid4().hex[:6]
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True)
    yield name
    subprocess.run(["userdel", name], check=False)
