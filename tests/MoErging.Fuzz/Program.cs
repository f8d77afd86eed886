using MoErging.Fuzz;

return FuzzCommand.Run(args, Console.Out, Console.Error);
