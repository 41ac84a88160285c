/* exit7: prints one line and powers off with status 7 (main's return value goes to POWER_OFF). */
#include "ftvm.h"

int main(void)
{
    print_str("exit7: powering off with status 7\n");
    return 7;
}
